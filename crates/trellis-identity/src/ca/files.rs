//! The CA directory on disk, in Istio's plug-in CA layout, and the rules for key files: written
//! 0600, refused when group or others may read them.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::CaError;

/// The signing (intermediate) certificate.
pub const CA_CERT: &str = "ca-cert.pem";
/// The signing certificate's private key (mode 0600).
pub const CA_KEY: &str = "ca-key.pem";
/// The trust bundle: every root workloads trust (two while a root is rotated).
pub const ROOT_CERT: &str = "root-cert.pem";
/// The signing certificate followed by the path to its root.
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// The four files, in the order a reader checks them.
pub(crate) const ALL: [&str; 4] = [CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT];

/// Reads `dir/name`; a missing file says what a CA directory holds.
pub(crate) fn read(dir: &Path, name: &str) -> Result<Vec<u8>, CaError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CaError::Missing { path }
        } else {
            CaError::Io {
                action: "read",
                path,
                error: source,
            }
        }
    })
}

/// Reads a private key file after checking that only its owner can read it.
pub(crate) fn read_key(dir: &Path, name: &str) -> Result<String, CaError> {
    let path = dir.join(name);
    match std::fs::metadata(&path) {
        Ok(meta) => check_key_mode(&path, meta.permissions().mode())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CaError::Missing { path });
        }
        Err(source) => {
            return Err(CaError::Io {
                action: "read",
                path,
                error: source,
            });
        }
    }
    let bytes = read(dir, name)?;
    String::from_utf8(bytes).map_err(|_| CaError::Io {
        action: "read",
        path: path.clone(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 PEM text"),
    })
}

/// Refuses a key file that group or others may read, write or execute.
pub fn check_key_mode(path: &Path, mode: u32) -> Result<(), CaError> {
    let mode = mode & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let who = if mode & 0o004 != 0 {
        "readable by others"
    } else if mode & 0o040 != 0 {
        "readable by its group"
    } else {
        "open to its group or others"
    };
    Err(CaError::KeyPermissions {
        path: path.to_owned(),
        mode,
        who,
    })
}

/// Writes `contents` to `path` atomically (a temporary file renamed over it); `private`
/// files are created with mode 0600 from the start, never briefly readable.
pub fn write(path: &Path, contents: &[u8], private: bool) -> Result<(), CaError> {
    let tmp = temp_path(path);
    write_new(&tmp, contents, private)?;
    std::fs::rename(&tmp, path).map_err(|source| CaError::Io {
        action: "write",
        path: path.to_owned(),
        error: source,
    })
}

/// Writes every `(name, contents, private)` into temporary files in `dir`, then renames them
/// into place in order, so a failure part-way leaves no half-written file.
pub(crate) fn write_all(dir: &Path, files: &[(&str, &[u8], bool)]) -> Result<(), CaError> {
    let mut staged = Vec::with_capacity(files.len());
    for (name, contents, private) in files {
        let path = dir.join(name);
        let tmp = temp_path(&path);
        if let Err(e) = write_new(&tmp, contents, *private) {
            for (tmp, _) in &staged {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e);
        }
        staged.push((tmp, path));
    }
    for (tmp, path) in staged {
        std::fs::rename(&tmp, &path).map_err(|source| CaError::Io {
            action: "write",
            path,
            error: source,
        })?;
    }
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], private: bool) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        action: "write",
        path: path.to_owned(),
        error: source,
    };
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}
