mod results;

fn main() {}
