//! `parity keygen`: a new ed25519 key pair to sign proof bundles with (`LLORCH_SIGNING_KEY`).

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// The secret key file to write (owner-only); the public key goes to FILE.pub. Neither may exist.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

pub fn run(args: KeygenArgs) -> Result<()> {
    let public = reports::signing::generate(&args.out)?;
    println!("secret key: {} (owner-only; sign with LLORCH_SIGNING_KEY={0})", args.out.display());
    println!("public key: {} (give it to readers: parity verify BUNDLE --public-key FILE)", reports::signing::public_path(&args.out).display());
    println!("fingerprint: {}", public.fingerprint());
    Ok(())
}
