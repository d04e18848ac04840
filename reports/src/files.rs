//! Writing files so they survive: owner-only secrets, and data flushed to the disk before a
//! rename makes it visible.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to a new file at `path` that only its owner can read (0600 on Unix), flushed to
/// the disk. Fails if `path` exists: a secret is never written over, nor through a planted link.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes `bytes` to `path` (replacing it) and flushes them to the disk before returning.
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Flushes a file's data and metadata to the disk.
pub fn sync_file(path: &Path) -> std::io::Result<()> {
    fs::OpenOptions::new().write(true).open(path)?.sync_all()
}

/// Flushes a folder's entries (files created, renamed or removed in it) to the disk. Unix only:
/// elsewhere a folder cannot be opened for this, and renames are journaled by the file system.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(path)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_owner_only_and_never_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_private(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let again = write_private(&path, b"two").unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"one", "the first secret is kept");
    }

    #[test]
    fn syncing_a_missing_file_or_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        sync_file(&dir.path().join("f")).unwrap_err();
        #[cfg(unix)]
        sync_dir(&dir.path().join("d")).unwrap_err();
        fs::write(dir.path().join("f"), "x").unwrap();
        sync_file(&dir.path().join("f")).unwrap();
        sync_dir(dir.path()).unwrap();
    }
}
