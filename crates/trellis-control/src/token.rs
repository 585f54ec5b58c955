//! Join tokens: the bootstrap credential of local mode (DESIGN §3). A token names one SPIFFE
//! identity and an expiry, and is signed (HMAC-SHA256) with a secret only the control plane
//! holds, `join-token.key` in the CA directory. Whoever holds a valid token may ask the CA for
//! a certificate for exactly that identity, until the token expires; renewals then use the
//! certificate itself.
//!
//! Format: `base64url(payload) "." base64url(tag)`, no padding, where the payload is
//! `<spiffe-id>|<expiry, unix seconds>` and the tag is HMAC-SHA256 over a fixed context string
//! and the payload. A token is not single-use: treat it like a password with a short life.
//!
//! The key file holds the 32-byte secret as base64url text, mode 0600. The control plane
//! creates it when absent (so does `trellis control token`); a key readable by others is
//! refused. Replacing the file invalidates every outstanding token.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use trellis_identity::{SpiffeId, human};

/// The key file's name inside the CA directory.
pub const KEY_FILE: &str = "join-token.key";

/// Signed into every tag, so a tag made for anything else never verifies as a join token.
const CONTEXT: &[u8] = b"trellis join token v1\0";
const SECRET_LEN: usize = 32;
/// A token longer than this is refused before any work (an ID is at most ~530 bytes).
const MAX_TOKEN_LEN: usize = 1024;

/// The secret that signs and verifies join tokens.
pub struct JoinTokenKey {
    key: hmac::Key,
    path: Option<PathBuf>,
}

/// Why a join token is not accepted. Every message starts with "join token".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("join token is malformed ({0}); pass it whole, as `trellis control token` printed it")]
    Malformed(&'static str),
    #[error(
        "join token has a bad signature: it was not minted by this control plane (or was \
         altered); mint one with `trellis control token --ca-dir <this control plane's CA dir>`"
    )]
    BadSignature,
    #[error(
        "join token for {id} expired {} ago (at {}); mint a new one with `trellis control token --id {id}`",
        human::duration(*.ago), human::time(*.at)
    )]
    Expired {
        id: SpiffeId,
        at: SystemTime,
        ago: Duration,
    },
}

/// Why the key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is readable by others (mode {mode:04o}); run chmod 600 {}",
        .path.display(), .path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "{} does not hold a join token key (expected {SECRET_LEN} bytes as base64url); \
         delete it to have a new one made (outstanding tokens stop working)",
        .path.display()
    )]
    Invalid { path: PathBuf },
    #[error("the system's secure random number generator failed")]
    Random,
}

impl JoinTokenKey {
    /// Loads `join-token.key` from `ca_dir`, creating it (0600) when absent. Returns the key
    /// and whether it was created. Safe against a concurrent creator: the file appears whole
    /// or not at all, and the loser of a race loads the winner's key.
    pub fn load_or_create(ca_dir: &Path) -> Result<(Self, bool), TokenKeyError> {
        let path = ca_dir.join(KEY_FILE);
        if path.exists() {
            return Ok((Self::load(ca_dir)?, false));
        }
        let mut secret = [0u8; SECRET_LEN];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| TokenKeyError::Random)?;
        // Write a private temporary file, then link it into place: link fails if the name
        // exists, so two creators never overwrite each other and no reader sees half a key.
        let tmp = ca_dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| TokenKeyError::Io {
                action,
                path,
                source,
            }
        };
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(format!("{}\n", B64.encode(secret)).as_bytes())?;
                file.sync_all()
            });
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("write", &tmp)(source));
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok((Self::from_secret_at(&secret, Some(path)), true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((Self::load(ca_dir)?, false))
            }
            Err(source) => Err(io("create", &path)(source)),
        }
    }

    /// Loads `join-token.key` from `ca_dir`; refuses a key readable by group or others.
    pub fn load(ca_dir: &Path) -> Result<Self, TokenKeyError> {
        let path = ca_dir.join(KEY_FILE);
        let io = |action| {
            let path = path.clone();
            move |source| TokenKeyError::Io {
                action,
                path,
                source,
            }
        };
        let mode = std::fs::metadata(&path)
            .map_err(io("read"))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenKeyError::Permissions { path, mode });
        }
        let text = std::fs::read_to_string(&path).map_err(io("read"))?;
        let secret = B64
            .decode(text.trim())
            .ok()
            .and_then(|bytes| <[u8; SECRET_LEN]>::try_from(bytes).ok())
            .ok_or_else(|| TokenKeyError::Invalid { path: path.clone() })?;
        Ok(Self::from_secret_at(&secret, Some(path)))
    }

    /// A key from raw secret bytes (tests; a deployment keeps the secret in the file).
    pub fn from_secret(secret: &[u8; SECRET_LEN]) -> Self {
        Self::from_secret_at(secret, None)
    }

    /// The file the key came from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A token for `id`, valid for `ttl` from now.
    pub fn mint(&self, id: &SpiffeId, ttl: Duration) -> String {
        self.mint_at(id, ttl, SystemTime::now())
    }

    /// A token for `id`, valid for `ttl` from `now` (its expiry rounded up to a whole second).
    pub fn mint_at(&self, id: &SpiffeId, ttl: Duration, now: SystemTime) -> String {
        let expiry = (now + ttl)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .unwrap_or(0);
        let payload = format!("{id}|{expiry}");
        let tag = hmac::sign(&self.key, &tagged(payload.as_bytes()));
        format!("{}.{}", B64.encode(payload), B64.encode(tag.as_ref()))
    }

    /// The identity `token` proves at `now`: its signature must verify with this key (in
    /// constant time) and it must not have expired.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<SpiffeId, TokenError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("it is too long"));
        }
        let (payload_b64, tag_b64) = token.split_once('.').ok_or(TokenError::Malformed(
            "no '.' between payload and signature",
        ))?;
        let payload = B64
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed("the payload is not base64url"))?;
        let tag = B64
            .decode(tag_b64)
            .map_err(|_| TokenError::Malformed("the signature is not base64url"))?;
        hmac::verify(&self.key, &tagged(&payload), &tag).map_err(|_| TokenError::BadSignature)?;

        // Signed by us: what follows only fails for a token minted by a buggy minter.
        let payload = std::str::from_utf8(&payload)
            .map_err(|_| TokenError::Malformed("the payload is not text"))?;
        let (id, expiry) = payload
            .rsplit_once('|')
            .ok_or(TokenError::Malformed("the payload has no expiry"))?;
        let id: SpiffeId = id
            .parse()
            .map_err(|_| TokenError::Malformed("the payload holds no valid SPIFFE ID"))?;
        let expiry: u64 = expiry
            .parse()
            .map_err(|_| TokenError::Malformed("the expiry is not a number"))?;
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(expiry);
        match human::until(now, at) {
            Ok(left) if !left.is_zero() => Ok(id),
            Ok(_) => Err(TokenError::Expired {
                id,
                at,
                ago: Duration::ZERO,
            }),
            Err(ago) => Err(TokenError::Expired { id, at, ago }),
        }
    }

    fn from_secret_at(secret: &[u8; SECRET_LEN], path: Option<PathBuf>) -> Self {
        JoinTokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            path,
        }
    }
}

/// Never prints the secret.
impl fmt::Debug for JoinTokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinTokenKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn tagged(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(CONTEXT.len() + payload.len());
    message.extend_from_slice(CONTEXT);
    message.extend_from_slice(payload);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", sa).unwrap()
    }

    fn key(byte: u8) -> JoinTokenKey {
        JoinTokenKey::from_secret(&[byte; SECRET_LEN])
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "trellis-control-token-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trip_proves_the_identity() {
        let key = key(7);
        let token = key.mint_at(&id("reviews"), HOUR, t0());
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "{token}"
        );
        assert_eq!(key.verify(&token, t0()), Ok(id("reviews")));
        // Valid until the last second, with surrounding whitespace from a copy-paste.
        let padded = format!("  {token}\n");
        assert_eq!(
            key.verify(&padded, t0() + HOUR - Duration::from_secs(1)),
            Ok(id("reviews"))
        );
    }

    #[test]
    fn expired_token_says_when_and_for_whom() {
        let key = key(7);
        let token = key.mint_at(&id("reviews"), HOUR, t0());
        let err = key
            .verify(&token, t0() + HOUR + Duration::from_secs(180))
            .unwrap_err();
        assert_eq!(
            err,
            TokenError::Expired {
                id: id("reviews"),
                at: t0() + HOUR,
                ago: Duration::from_secs(180)
            }
        );
        let message = err.to_string();
        assert!(
            message.starts_with(
                "join token for spiffe://cluster.local/ns/default/sa/reviews expired 3m ago"
            ),
            "{message}"
        );
        assert!(message.contains("trellis control token --id"), "{message}");
        // Exactly at the expiry it is no longer valid.
        assert!(matches!(
            key.verify(&token, t0() + HOUR),
            Err(TokenError::Expired { .. })
        ));
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let key = key(7);
        let token = key.mint_at(&id("reviews"), HOUR, t0());
        let (payload, tag) = token.split_once('.').unwrap();

        // Another identity, or a later expiry, under the original tag.
        let forged_id = B64.encode(format!("{}|{}", id("ratings"), 1_750_003_600));
        let forged_exp = B64.encode(format!("{}|{}", id("reviews"), 1_850_000_000));
        for forged in [forged_id, forged_exp] {
            assert_eq!(
                key.verify(&format!("{forged}.{tag}"), t0()),
                Err(TokenError::BadSignature)
            );
        }
        // One flipped character in the tag.
        let mut bytes = tag.as_bytes().to_vec();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        let flipped = format!("{payload}.{}", String::from_utf8(bytes).unwrap());
        assert_eq!(key.verify(&flipped, t0()), Err(TokenError::BadSignature));
    }

    #[test]
    fn another_control_planes_token_is_refused() {
        let token = key(7).mint_at(&id("reviews"), HOUR, t0());
        let err = key(8).verify(&token, t0()).unwrap_err();
        assert_eq!(err, TokenError::BadSignature);
        assert!(
            err.to_string().contains("not minted by this control plane"),
            "{err}"
        );
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let key = key(7);
        for (token, reason) in [
            ("", "no '.'"),
            ("abc", "no '.'"),
            ("a*b.c", "payload is not base64url"),
            ("abc.d*e", "signature is not base64url"),
        ] {
            let err = key.verify(token, t0()).unwrap_err();
            assert!(
                matches!(err, TokenError::Malformed(_)) && err.to_string().contains(reason),
                "{token:?}: {err}"
            );
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            key.verify(&long, t0()),
            Err(TokenError::Malformed("it is too long"))
        );
    }

    #[test]
    fn key_file_is_created_private_then_reused() {
        let dir = temp_dir("create");
        let (first, created) = JoinTokenKey::load_or_create(&dir).unwrap();
        assert!(created);
        let path = dir.join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(first.path(), Some(path.as_path()));

        let (second, created) = JoinTokenKey::load_or_create(&dir).unwrap();
        assert!(!created);
        let token = first.mint(&id("a"), HOUR);
        assert_eq!(second.verify(&token, SystemTime::now()), Ok(id("a")));
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [KEY_FILE]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_file_readable_by_others_or_garbled_is_refused() {
        let dir = temp_dir("perms");
        JoinTokenKey::load_or_create(&dir).unwrap();
        let path = dir.join(KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = JoinTokenKey::load(&dir).unwrap_err();
        assert!(matches!(
            err,
            TokenKeyError::Permissions { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"), "{err}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "short\n").unwrap();
        let err = JoinTokenKey::load(&dir).unwrap_err();
        assert!(matches!(err, TokenKeyError::Invalid { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let shown = format!("{:?}", key(7));
        assert!(!shown.contains("7"), "{shown}");
    }
}
