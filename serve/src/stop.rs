//! Stop sequences on streamed text: text is passed on as soon as no stop sequence can start in
//! it, held back while it might be the beginning of one, and cut where one is found.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What one push gives: the text safe to send, and whether a stop sequence was met (the text
/// ends just before it, and generation should end).
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    pub text: String,
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher { stops, held: String::new() }
    }

    pub fn push(&mut self, text: &str) -> Pushed {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let text = self.held[..at].to_string();
            self.held.clear();
            return Pushed { text, stopped: true };
        }
        let keep = self.longest_partial_stop();
        let text = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        Pushed { text, stopped: false }
    }

    /// The text still held when generation ends without meeting a stop sequence.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Bytes at the end of `held` that begin some stop sequence (at a character boundary).
    fn longest_partial_stop(&self) -> usize {
        let h = &self.held;
        (1..=h.len())
            .rev()
            .find(|&n| h.is_char_boundary(h.len() - n) && self.stops.iter().any(|s| s.len() > n && s.starts_with(&h[h.len() - n..])))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for p in pieces {
            let r = m.push(p);
            out.push(r.text);
            if r.stopped {
                return (out, true, String::new());
            }
        }
        (out, false, m.finish())
    }

    #[test]
    fn text_without_a_stop_prefix_passes_at_once() {
        assert_eq!(run(&["\n\n"], &["ab", "c"]), (vec!["ab".into(), "c".into()], false, String::new()));
        assert_eq!(run(&[], &["x\n\n"]), (vec!["x\n\n".into()], false, String::new()));
    }

    #[test]
    fn a_stop_split_across_pieces_is_held_then_cut() {
        // "END" arrives as "E" + "ND": "E" is held, then the stop is met and nothing of it is sent.
        assert_eq!(run(&["END"], &["one E", "ND two"]), (vec!["one ".into(), "".into()], true, String::new()));
    }

    #[test]
    fn a_false_start_is_released_when_it_stops_matching() {
        assert_eq!(run(&["END"], &["E", "x"]), (vec!["".into(), "Ex".into()], false, String::new()));
        // held at the end of the stream comes back from finish
        assert_eq!(run(&["END"], &["aEN"]), (vec!["a".into()], false, "EN".into()));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(run(&["b", "a"], &["xab"]), (vec!["x".into()], true, String::new()));
    }

    #[test]
    fn multibyte_text_is_cut_at_character_boundaries() {
        assert_eq!(run(&["éé"], &["aé", "b"]), (vec!["a".into(), "éb".into()], false, String::new()));
    }
}
