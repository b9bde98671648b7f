//! Seed files (contract §7): written with mode 0600 and never over another file, refused when
//! others may read them. No error here quotes a seed; nothing prints, logs or sends one.

use crate::Error;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use truebit_streams::{PublicKey, SigningKey};

/// Writes a new key pair's seed to `out` (mode 0600, never over an existing file); returns the
/// public key.
pub fn new_key(out: &Path) -> Result<PublicKey, Error> {
    let key = SigningKey::generate();
    write_seed(out, &key)?;
    Ok(key.public_key().clone())
}

pub(crate) fn write_seed(out: &Path, key: &SigningKey) -> Result<(), Error> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Usage(format!(
                    "{} already exists; a seed is never written over another: choose another --out, or remove the old file if its key is revoked",
                    out.display()
                ))
            } else {
                Error::io("creating the seed file", out)(e)
            }
        })?;
    writeln!(file, "{}", key.seed())
        .and_then(|()| file.sync_all())
        .map_err(Error::io("writing the seed file", out))
}

/// Reads a seed file: refused when others may read it, or when it holds no user seed. Neither
/// error quotes the file.
pub fn read_seed(path: &Path, what: &str) -> Result<SigningKey, Error> {
    let meta = std::fs::metadata(path).map_err(Error::io("reading the seed file", path))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(Error::Usage(format!(
            "{what} {} can be read by others (mode {:o}); a seed signs as its holder: run `chmod 600 {}` and keep it that way",
            path.display(),
            mode & 0o777,
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(Error::io("reading the seed file", path))?;
    SigningKey::from_seed(&text).ok_or_else(|| {
        Error::Usage(format!(
            "{what} {} does not hold an nkey user seed (SU…, as `keys new` writes); check the path",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_is_written_0600_never_twice_and_refused_once_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.seed");
        let public = new_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_seed(&path, "the seed").unwrap().public_key(), &public);

        let again = new_key(&path).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
        assert_eq!(read_seed(&path, "the seed").unwrap().public_key(), &public);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = read_seed(&path, "the seed").unwrap_err();
        let seed = std::fs::read_to_string(&path).unwrap();
        assert_eq!(open.exit_code(), 2);
        assert!(open.to_string().contains("chmod 600"), "{open}");
        assert!(
            !open.to_string().contains(seed.trim()),
            "an error never quotes the seed"
        );

        let junk = dir.path().join("junk");
        std::fs::write(&junk, "not a seed").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let bad = read_seed(&junk, "the seed").unwrap_err();
        assert!(bad.to_string().contains("does not hold"), "{bad}");
    }
}
