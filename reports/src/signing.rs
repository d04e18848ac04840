//! Signed bundles: an ed25519 signature over the exact bytes of a bundle's manifest.
//!
//! A bundle's hashes prove integrity only: every file still matches its manifest line. Anyone can
//! rewrite a file and its manifest line together, so an intact bundle says nothing about who made
//! it. A signature does, to a reader who already holds the signer's public key: [`check`] accepts
//! `manifest.sig` only against a key given to it, never against the key the file names.
//!
//! Key files are one line of text: `parity-ed25519-secret <64 hex digits>` (owner-only, refused if
//! others can read it) and `parity-ed25519-public <64 hex digits>`, as [`generate`] writes them.

use crate::hashes::{sha256_bytes, unhex};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// The file beside the manifest holding its signature.
pub const SIGNATURE: &str = "manifest.sig";
/// The file a signature is over: the bundle's manifest ([`SIGNED`] is this).
pub const SIGNED: &str = "manifest.toml";

const SECRET_TAG: &str = "parity-ed25519-secret";
const PUBLIC_TAG: &str = "parity-ed25519-public";

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{action} key file {path}: {reason}")]
    Io { action: &'static str, path: PathBuf, reason: std::io::Error },
    #[error("key file {path}: {problem}")]
    KeyFile { path: PathBuf, problem: String },
    #[error("no randomness from the OS for a new key: {0}")]
    Random(String),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SignError {
    let path = path.to_path_buf();
    move |reason| SignError::Io { action, path, reason }
}

fn key_file(path: &Path, problem: impl Into<String>) -> SignError {
    SignError::KeyFile { path: path.to_path_buf(), problem: problem.into() }
}

/// A secret signing key, loaded from its file. Its `Debug` shows the fingerprint, never the secret.
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public_key().fingerprint())
    }
}

impl Signer {
    /// The secret key in `path`, as [`generate`] wrote it.
    pub fn load(path: &Path) -> Result<Signer, SignError> {
        let text = fs::read_to_string(path).map_err(io("reading", path))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // As ssh does: a secret others could read may have been copied, so it proves nothing.
            let mode = fs::metadata(path).map_err(io("reading", path))?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(key_file(path, format!("a secret key readable or writable by other users (mode {mode:04o}); chmod 600 it")));
            }
        }
        let secret = parse_key_line(path, &text, SECRET_TAG)?;
        Ok(Signer { key: SigningKey::from_bytes(&secret) })
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// The text of `manifest.sig` for these manifest bytes.
    pub(crate) fn signature_file(&self, manifest: &[u8]) -> String {
        let public = self.public_key();
        let file = SignatureFile {
            algorithm: "ed25519".into(),
            public_key: hex(public.0.as_bytes()),
            fingerprint: public.fingerprint(),
            signature: hex(&self.key.sign(manifest).to_bytes()),
        };
        let body = toml::to_string(&file).unwrap_or_default();
        format!("# parity bundle signature: ed25519 over the exact bytes of manifest.toml\n{body}")
    }
}

/// A public key, to check signatures with.
#[derive(Clone, Debug, PartialEq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The public key in `path`, as [`generate`] wrote it (`FILE.pub`).
    pub fn load(path: &Path) -> Result<PublicKey, SignError> {
        let text = fs::read_to_string(path).map_err(io("reading", path))?;
        if text.starts_with(SECRET_TAG) {
            return Err(key_file(path, "this is a secret key; give its public half (the .pub file written beside it)"));
        }
        let bytes = parse_key_line(path, &text, PUBLIC_TAG)?;
        VerifyingKey::from_bytes(&bytes).map(PublicKey).map_err(|_| key_file(path, "not a valid ed25519 public key"))
    }

    /// `ed25519:` and the first 32 hex digits of the SHA-256 of the key's 32 bytes: how reports
    /// and `parity verify` name a signer.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.0.as_bytes())
    }
}

fn fingerprint(public: &[u8; 32]) -> String {
    format!("ed25519:{}", &sha256_bytes(public)[..32])
}

/// `tag` and 64 hex digits on the file's only line.
fn parse_key_line(path: &Path, text: &str, tag: &str) -> Result<[u8; 32], SignError> {
    let line = text.trim_end_matches(['\n', '\r']);
    let Some(digits) = line.strip_prefix(tag).and_then(|rest| rest.strip_prefix(' ')) else {
        return Err(key_file(path, format!("not a parity key: the file must be one line `{tag} <64 hex digits>` (made by `parity keygen`)")));
    };
    unhex::<32>(digits).ok_or_else(|| key_file(path, format!("`{tag}` must be followed by 64 hex digits")))
}

/// Makes a new key pair: the secret in `out` (owner-only) and the public key in `out.pub`.
/// Refuses to replace either file.
pub fn generate(out: &Path) -> Result<PublicKey, SignError> {
    let public_path = public_path(out);
    for path in [out, public_path.as_path()] {
        if fs::symlink_metadata(path).is_ok() {
            return Err(key_file(path, "already exists; keys are never overwritten: move it away or choose another --out"));
        }
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| SignError::Random(e.to_string()))?;
    let signer = Signer { key: SigningKey::from_bytes(&secret) };
    let public = signer.public_key();
    crate::files::write_private(out, format!("{SECRET_TAG} {}\n", hex(&secret)).as_bytes()).map_err(io("writing", out))?;
    if let Err(e) = fs::write(&public_path, format!("{PUBLIC_TAG} {}\n", hex(public.0.as_bytes()))) {
        // Half a key pair is no use: the secret goes too, so a retry starts clean.
        let _ = fs::remove_file(out);
        return Err(io("writing", &public_path)(e));
    }
    Ok(public)
}

/// Where [`generate`] puts the public half of the key written to `out`: `out` with `.pub` added.
pub fn public_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

#[derive(Debug, Serialize, Deserialize)]
struct SignatureFile {
    algorithm: String,
    public_key: String,
    fingerprint: String,
    signature: String,
}

/// What [`check`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// The manifest is signed by the trusted key (its fingerprint).
    Signed(String),
    /// No `manifest.sig`.
    Unsigned,
    /// A valid signature, but by another key (its fingerprint): not the signer trusted.
    OtherSigner(String),
    /// `manifest.sig` is unreadable or does not match the manifest: one was changed after signing.
    Bad(String),
}

/// Checks `bundle_dir`'s `manifest.sig` against the exact bytes of its manifest and `trusted`.
pub fn check(bundle_dir: &Path, trusted: &PublicKey) -> Check {
    let sig_path = bundle_dir.join(SIGNATURE);
    let text = match fs::read_to_string(&sig_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Check::Unsigned,
        Err(e) => return Check::Bad(format!("reading {}: {e}", sig_path.display())),
    };
    let manifest_path = bundle_dir.join(SIGNED);
    let manifest = match fs::read(&manifest_path) {
        Ok(bytes) => bytes,
        Err(e) => return Check::Bad(format!("reading {}: {e}", manifest_path.display())),
    };
    let file: SignatureFile = match toml::from_str(&text) {
        Ok(file) => file,
        Err(e) => return Check::Bad(format!("{SIGNATURE} is not a parity signature: {}", e.message())),
    };
    if file.algorithm != "ed25519" {
        return Check::Bad(format!("{SIGNATURE}: algorithm {:?}, expected \"ed25519\"", file.algorithm));
    }
    let Some(signature) = unhex::<64>(&file.signature).map(|b| Signature::from_bytes(&b)) else {
        return Check::Bad(format!("{SIGNATURE}: the signature is not 128 hex digits"));
    };
    if trusted.0.verify_strict(&manifest, &signature).is_ok() {
        return Check::Signed(trusted.fingerprint());
    }
    // Named as another signer only if the key the file names really made this signature.
    let claimed = unhex::<32>(&file.public_key).and_then(|b| VerifyingKey::from_bytes(&b).ok());
    match claimed {
        Some(key) if key != trusted.0 && key.verify_strict(&manifest, &signature).is_ok() => Check::OtherSigner(fingerprint(key.as_bytes())),
        _ => Check::Bad(format!("the signature does not match {}: it or {SIGNATURE} was changed after signing", SIGNED)),
    }
}

/// The fingerprint `manifest.sig` names, unchecked: shown by `parity verify` without a key.
pub fn claimed_signer(bundle_dir: &Path) -> Option<String> {
    let text = fs::read_to_string(bundle_dir.join(SIGNATURE)).ok()?;
    toml::from_str::<SignatureFile>(&text).ok().map(|f| f.fingerprint)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 section 7.1, test 1: secret, public key, and the signature of the empty message.
    const RFC_SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const RFC_SIGNATURE: &str =
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn rfc_signer(dir: &Path) -> Signer {
        let path = dir.join("rfc.key");
        crate::files::write_private(&path, format!("{SECRET_TAG} {RFC_SECRET}\n").as_bytes()).unwrap();
        Signer::load(&path).unwrap()
    }

    #[test]
    fn a_loaded_key_signs_as_rfc_8032_test_1_and_is_named_by_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let signer = rfc_signer(dir.path());
        let file: SignatureFile = toml::from_str(&signer.signature_file(b"")).unwrap();
        assert_eq!((file.public_key.as_str(), file.signature.as_str()), (RFC_PUBLIC, RFC_SIGNATURE));
        // sha256 of the public key's 32 bytes, computed with Python's hashlib.
        assert_eq!(file.fingerprint, "ed25519:21fe31dfa154a261626bf854046fd227");
        assert_eq!(signer.public_key().fingerprint(), file.fingerprint);
        assert_eq!(format!("{signer:?}"), "Signer(ed25519:21fe31dfa154a261626bf854046fd227)", "Debug never shows the secret");
    }

    /// A folder holding a manifest and its signature by `signer`.
    fn signed_dir(signer: &Signer, manifest: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SIGNED), manifest).unwrap();
        fs::write(dir.path().join(SIGNATURE), signer.signature_file(manifest.as_bytes())).unwrap();
        dir
    }

    #[test]
    fn a_signature_is_believed_only_for_the_exact_manifest_and_the_trusted_key() {
        let keys = tempfile::tempdir().unwrap();
        let ours = rfc_signer(keys.path());
        let theirs_path = keys.path().join("theirs.key");
        let theirs_public = generate(&theirs_path).unwrap();
        let theirs = Signer::load(&theirs_path).unwrap();
        assert_eq!(theirs.public_key(), theirs_public);
        let trusted = ours.public_key();

        let dir = signed_dir(&ours, "[bundle]\nkind = \"run\"\n");
        assert_eq!(check(dir.path(), &trusted), Check::Signed(trusted.fingerprint()));
        assert_eq!(claimed_signer(dir.path()), Some(trusted.fingerprint()));
        // One byte of the manifest changed after signing.
        fs::write(dir.path().join(SIGNED), "[bundle]\nkind = \"rum\"\n").unwrap();
        assert!(matches!(check(dir.path(), &trusted), Check::Bad(_)));

        let other = signed_dir(&theirs, "[bundle]\nkind = \"run\"\n");
        assert_eq!(check(other.path(), &trusted), Check::OtherSigner(theirs_public.fingerprint()));
        // Their signature relabelled with our public key is not ours, nor theirs: bad.
        let sig = fs::read_to_string(other.path().join(SIGNATURE)).unwrap().replace(&hex(theirs_public.0.as_bytes()), RFC_PUBLIC);
        fs::write(other.path().join(SIGNATURE), sig).unwrap();
        assert!(matches!(check(other.path(), &trusted), Check::Bad(_)));

        fs::write(other.path().join(SIGNATURE), "garbage").unwrap();
        assert!(matches!(check(other.path(), &trusted), Check::Bad(m) if m.contains("not a parity signature")));
        fs::remove_file(other.path().join(SIGNATURE)).unwrap();
        assert_eq!(check(other.path(), &trusted), Check::Unsigned);
    }

    #[test]
    fn generate_writes_an_owner_only_secret_and_its_public_half_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("signer");
        let public = generate(&out).unwrap();
        assert_eq!(public_path(&out), dir.path().join("signer.pub"));
        assert_eq!(PublicKey::load(&public_path(&out)).unwrap(), public);
        assert_eq!(Signer::load(&out).unwrap().public_key(), public);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let secret = fs::read(&out).unwrap();
        let err = generate(&out).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(fs::read(&out).unwrap(), secret, "the first key is kept");
        fs::remove_file(&out).unwrap();
        assert!(generate(&out).unwrap_err().to_string().contains("signer.pub"), "an orphan .pub is not overwritten either");
    }

    #[test]
    fn key_files_missing_malformed_swapped_or_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = |r: Result<Signer, SignError>| r.expect_err("refused").to_string();
        assert!(err(Signer::load(&dir.path().join("none"))).contains("reading key file"));
        let path = dir.path().join("k");
        for (text, says) in
            [("hello\n", "not a parity key"), ("parity-ed25519-secret 12\n", "64 hex digits"), ("parity-ed25519-public 00\n", "not a parity key")]
        {
            let _ = fs::remove_file(&path);
            crate::files::write_private(&path, text.as_bytes()).unwrap();
            let e = err(Signer::load(&path));
            assert!(e.contains(says) && !e.contains('\n'), "{text:?}: {e}");
        }
        let out = dir.path().join("pair");
        generate(&out).unwrap();
        let e = PublicKey::load(&out).unwrap_err().to_string();
        assert!(e.contains("this is a secret key"), "{e}");
        assert!(PublicKey::load(&path).unwrap_err().to_string().contains("64 hex digits"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&out, fs::Permissions::from_mode(0o640)).unwrap();
            let e = err(Signer::load(&out));
            assert!(e.contains("mode 0640") && e.contains("chmod 600"), "{e}");
        }
    }
}
