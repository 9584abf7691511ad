//! The CLI's state on disk: `<profile>/profile.json` (who is logged in, with
//! the session token; mode 0600), `<profile>/sync_key` (the opaque key
//! after the last printed events) and `<profile>/chat_state.json` (what
//! `pigeon chat` derived from events before that key and cannot ask the
//! server for again: receipt positions). All are replaced atomically.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

const PROFILE_FILE: &str = "profile.json";
const SYNC_KEY_FILE: &str = "sync_key";
const CHAT_STATE_FILE: &str = "chat_state.json";
/// A profile file larger than this is not ours.
const PROFILE_BYTES_MAX: u64 = 64 * 1024;
/// A sync key file larger than this is not ours (servers issue keys of at most 256 bytes).
const SYNC_KEY_FILE_BYTES_MAX: u64 = 4 * 1024;
/// A chat state file larger than this is not ours (the chat keeps at most
/// `RECEIPTS_STORED_MAX` entries of well under 200 bytes).
const CHAT_STATE_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// Who this profile is logged in as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The server URL used at login (for reference; commands use `--server`).
    pub server: String,
    /// The account's username.
    pub username: String,
    /// The account's user id.
    pub user_id: u64,
    /// The device this login created.
    pub device_id: u64,
    /// The session token; absent after logout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// When the token stops working, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// A profile directory.
#[derive(Debug, Clone)]
pub struct ProfileDir {
    dir: PathBuf,
}

impl ProfileDir {
    /// `dir` if given, else `$HOME/.pigeon`, else `./.pigeon`.
    pub fn resolve(dir: Option<&Path>) -> ProfileDir {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => match std::env::var_os("HOME") {
                Some(home) if !home.is_empty() => PathBuf::from(home).join(".pigeon"),
                _ => PathBuf::from(".pigeon"),
            },
        };
        ProfileDir { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The stored profile, or `None` if there is none yet.
    pub fn load(&self) -> anyhow::Result<Option<Profile>> {
        let path = self.dir.join(PROFILE_FILE);
        let Some(bytes) = read_optional(&path, PROFILE_BYTES_MAX)? else {
            return Ok(None);
        };
        let profile = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(profile))
    }

    /// The stored profile with its token, or an error telling the user to log in.
    pub fn load_logged_in(&self) -> anyhow::Result<(Profile, String)> {
        if let Some(profile) = self.load()?
            && let Some(token) = profile.token.clone().filter(|t| !t.is_empty())
        {
            return Ok((profile, token));
        }
        bail!(
            "not logged in (no token in {}): run `pigeon login <username>` first",
            self.dir.join(PROFILE_FILE).display()
        )
    }

    /// Stores `profile` (mode 0600).
    pub fn save(&self, profile: &Profile) -> anyhow::Result<()> {
        let mut json = serde_json::to_vec_pretty(profile)?;
        json.push(b'\n');
        write_atomic(&self.dir, PROFILE_FILE, &json)
    }

    /// The stored sync key; empty if none.
    pub fn load_sync_key(&self) -> anyhow::Result<Vec<u8>> {
        Ok(
            read_optional(&self.dir.join(SYNC_KEY_FILE), SYNC_KEY_FILE_BYTES_MAX)?
                .unwrap_or_default(),
        )
    }

    /// Stores the sync key.
    pub fn save_sync_key(&self, key: &[u8]) -> anyhow::Result<()> {
        write_atomic(&self.dir, SYNC_KEY_FILE, key)
    }

    /// The chat's stored state, if any.
    pub fn load_chat_state(&self) -> anyhow::Result<Option<Vec<u8>>> {
        read_optional(&self.dir.join(CHAT_STATE_FILE), CHAT_STATE_BYTES_MAX)
    }

    /// Stores the chat's state; call before storing the sync key it goes with.
    pub fn save_chat_state(&self, bytes: &[u8]) -> anyhow::Result<()> {
        write_atomic(&self.dir, CHAT_STATE_FILE, bytes)
    }

    /// Deletes the chat's state (a new login may be another account).
    pub fn forget_chat_state(&self) -> anyhow::Result<()> {
        let path = self.dir.join(CHAT_STATE_FILE);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

fn read_optional(path: &Path, bytes_max: u64) -> anyhow::Result<Option<Vec<u8>>> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if meta.len() > bytes_max {
        bail!("{} is larger than {bytes_max} bytes", path.display());
    }
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(bytes))
}

/// Writes `dir/name` so a reader sees the old or the new content, never a
/// mix: write a private temp file, fsync it, rename it over the old one.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = private_file_options().open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        // Persist the rename itself; not every platform can open a directory.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Options creating a file only its owner can read: it may hold a token.
fn private_file_options() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile {
            server: "tcp://127.0.0.1:7700".into(),
            username: "alice".into(),
            user_id: 1,
            device_id: 2,
            token: Some("ab".repeat(32)),
            expires_at_ms: 3,
        }
    }

    /// Checks a profile round-trips through disk, is private (0600), and
    /// that a missing or token-less profile means "not logged in".
    #[test]
    fn profile_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ProfileDir::resolve(Some(&tmp.path().join("nested/profile")));
        assert_eq!(dir.load().unwrap(), None);
        assert!(dir.load_logged_in().is_err());
        dir.save(&profile()).unwrap();
        assert_eq!(dir.load().unwrap(), Some(profile()));
        let (_, token) = dir.load_logged_in().unwrap();
        assert_eq!(token, "ab".repeat(32));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(PROFILE_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut logged_out = profile();
        logged_out.token = None;
        dir.save(&logged_out).unwrap();
        assert!(
            !fs::read_to_string(dir.path().join(PROFILE_FILE))
                .unwrap()
                .contains("token")
        );
        let err = dir.load_logged_in().unwrap_err().to_string();
        assert!(err.contains("not logged in"), "{err}");
    }

    /// Checks the sync key starts empty, is replaced whole, and leaves no temp files.
    #[test]
    fn sync_key_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ProfileDir::resolve(Some(tmp.path()));
        assert_eq!(dir.load_sync_key().unwrap(), b"");
        dir.save_sync_key(b"\x00\x01long key").unwrap();
        dir.save_sync_key(b"k2").unwrap();
        assert_eq!(dir.load_sync_key().unwrap(), b"k2");
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![SYNC_KEY_FILE.to_string()]);
    }

    /// Checks the chat state is absent at first, replaced whole, and forgotten.
    #[test]
    fn chat_state_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ProfileDir::resolve(Some(tmp.path()));
        assert_eq!(dir.load_chat_state().unwrap(), None);
        dir.forget_chat_state().unwrap();
        dir.save_chat_state(b"{\"a\":1}").unwrap();
        dir.save_chat_state(b"{}").unwrap();
        assert_eq!(dir.load_chat_state().unwrap().as_deref(), Some(&b"{}"[..]));
        dir.forget_chat_state().unwrap();
        assert_eq!(dir.load_chat_state().unwrap(), None);
    }

    /// Checks a corrupt profile is reported, not treated as absent.
    #[test]
    fn corrupt_profile_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(PROFILE_FILE), b"{not json").unwrap();
        let dir = ProfileDir::resolve(Some(tmp.path()));
        let err = format!("{:#}", dir.load().unwrap_err());
        assert!(err.contains("profile.json"), "{err}");
    }
}
