//! Where `nullworker endpoint`, `client` and `dispatch` find the account
//! key, in order: `--api-key`,
//! `VAST_API_KEY`, the local engine's own key (only when the target is a
//! loopback engine), then the files of Vast's CLI (`vastai set api-key`):
//! `$XDG_CONFIG_HOME/vastai/vast_api_key` (else
//! `~/.config/vastai/vast_api_key`) and the legacy `~/.vast_api_key`.
//!
//! The engine's key comes before Vast's files for a loopback target because
//! a Vast account key is never valid on a local engine. The lookup is a pure
//! walk over [`KeyLookup`] with the readers passed in, so tests use a
//! temporary HOME; [`KeyLookup::from_env`] reads the real environment.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a key was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `--api-key`.
    Flag,
    /// `VAST_API_KEY`.
    Env,
    /// The local engine's state database.
    EngineState(PathBuf),
    /// A key file of Vast's CLI.
    VastFile(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag => f.write_str("--api-key"),
            Self::Env => f.write_str("VAST_API_KEY"),
            Self::EngineState(path) => write!(f, "{} (the local engine's key)", path.display()),
            Self::VastFile(path) => write!(f, "{}", path.display()),
        }
    }
}

/// No key in any of the places looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no account key found; looked at: {}. Pass --api-key KEY, set VAST_API_KEY, or save Vast's key with `vastai set api-key KEY`{}",
    .looked.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    if *.local { " (a local engine prints its key at its first start)" } else { "" }
)]
pub struct NoKey {
    /// Every place, in the order looked at.
    pub looked: Vec<KeySource>,
    /// Whether the target was a local engine.
    pub local: bool,
}

/// The inputs of the lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyLookup {
    /// `--api-key`.
    pub flag: Option<String>,
    /// `VAST_API_KEY`.
    pub env: Option<String>,
    /// `HOME`.
    pub home: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// The local engine's state directory, when the target is a local engine.
    pub engine_state_dir: Option<PathBuf>,
}

impl KeyLookup {
    /// The lookup for this process: `flag`, the environment, and (for a
    /// loopback target) the engine's state directory (`NULLWORKER_STATE_DIR`,
    /// else the engine's default).
    pub fn from_env(flag: Option<String>, local_target: bool) -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            flag,
            env: var("VAST_API_KEY").map(|v| v.to_string_lossy().into_owned()),
            home: var("HOME").map(PathBuf::from),
            xdg_config_home: var("XDG_CONFIG_HOME").map(PathBuf::from),
            engine_state_dir: local_target.then(|| {
                var("NULLWORKER_STATE_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(nullworker_engine::config::default_state_dir)
            }),
        }
    }

    /// The files looked at after the flag and the variable, in order.
    pub fn files(&self) -> Vec<KeySource> {
        let mut places = Vec::new();
        if let Some(dir) = &self.engine_state_dir {
            places.push(KeySource::EngineState(dir.join("engine.sqlite3")));
        }
        // As Vast's CLI: an absolute XDG_CONFIG_HOME, else ~/.config.
        let config = self
            .xdg_config_home
            .clone()
            .filter(|p| p.is_absolute())
            .or_else(|| self.home.as_ref().map(|h| h.join(".config")));
        if let Some(config) = config {
            places.push(KeySource::VastFile(config.join("vastai/vast_api_key")));
        }
        if let Some(home) = &self.home {
            places.push(KeySource::VastFile(home.join(".vast_api_key")));
        }
        places
    }

    /// The first key found. `read_file` reads a Vast key file,
    /// `read_engine` the key stored in an engine's database; both answer
    /// `None` when there is none.
    pub fn find(
        &self,
        read_file: impl Fn(&Path) -> Option<String>,
        read_engine: impl Fn(&Path) -> Option<String>,
    ) -> Result<(String, KeySource), NoKey> {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|k| !k.is_empty())
        }
        if let Some(key) = given(&self.flag) {
            return Ok((key.to_owned(), KeySource::Flag));
        }
        if let Some(key) = given(&self.env) {
            return Ok((key.to_owned(), KeySource::Env));
        }
        let mut looked = vec![KeySource::Flag, KeySource::Env];
        for place in self.files() {
            let found = match &place {
                KeySource::EngineState(path) => read_engine(path),
                KeySource::VastFile(path) => read_file(path),
                KeySource::Flag | KeySource::Env => None,
            };
            if let Some(key) = found.map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()) {
                return Ok((key, place));
            }
            looked.push(place);
        }
        Err(NoKey {
            looked,
            local: self.engine_state_dir.is_some(),
        })
    }
}

/// Reads a key file (`None` if it cannot be read).
pub fn read_key_file(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Reads the account key a local engine stored in its database (`None` if
/// there is no database or no stored key, e.g. an engine started with
/// `--account-key`).
pub fn read_engine_key(db_path: &Path) -> Option<String> {
    if !db_path.is_file() {
        return None;
    }
    match nullworker_engine::db::Db::open(db_path) {
        Ok(db) => db.meta("account_key").ok().flatten(),
        Err(err) => {
            tracing::debug!(path = %db_path.display(), %err, "cannot read the engine's key");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn keys_are_looked_up_in_order() {
        let home = tempfile::tempdir().unwrap();
        let home = home.path();
        let xdg = home.join(".config/vastai/vast_api_key");
        let legacy = home.join(".vast_api_key");
        let state = home.join("state");
        let engine_db = state.join("engine.sqlite3");
        let engine = |p: &Path| (p == engine_db).then(|| "engine-key".to_owned());
        let mut lookup = KeyLookup {
            home: Some(home.to_owned()),
            engine_state_dir: Some(state.clone()),
            ..KeyLookup::default()
        };
        let find = |l: &KeyLookup| l.find(read_key_file, engine);

        // Nothing anywhere but the engine: the engine's key.
        assert_eq!(
            find(&lookup).unwrap(),
            (
                "engine-key".into(),
                KeySource::EngineState(engine_db.clone())
            )
        );
        // Not a local target: Vast's files only.
        lookup.engine_state_dir = None;
        let err = find(&lookup).unwrap_err();
        assert_eq!(
            err.looked,
            vec![
                KeySource::Flag,
                KeySource::Env,
                KeySource::VastFile(xdg.clone()),
                KeySource::VastFile(legacy.clone()),
            ]
        );
        let text = err.to_string();
        for needle in [
            "--api-key",
            "VAST_API_KEY",
            ".vast_api_key",
            "vastai/vast_api_key",
        ] {
            assert!(text.contains(needle), "{text}");
        }
        write(&legacy, "legacy-key\n");
        assert_eq!(
            find(&lookup).unwrap(),
            ("legacy-key".into(), KeySource::VastFile(legacy.clone()))
        );
        write(&xdg, "  xdg-key\n");
        assert_eq!(
            find(&lookup).unwrap(),
            ("xdg-key".into(), KeySource::VastFile(xdg.clone()))
        );
        // The engine's key comes before Vast's files for a local target.
        lookup.engine_state_dir = Some(state);
        assert_eq!(find(&lookup).unwrap().0, "engine-key");
        // An absolute XDG_CONFIG_HOME moves Vast's file; a relative one is ignored.
        lookup.engine_state_dir = None;
        let other = home.join("elsewhere");
        write(&other.join("vastai/vast_api_key"), "moved-key");
        lookup.xdg_config_home = Some(other);
        assert_eq!(find(&lookup).unwrap().0, "moved-key");
        lookup.xdg_config_home = Some(PathBuf::from("relative"));
        assert_eq!(find(&lookup).unwrap().0, "xdg-key");
        // The variable beats the files, the flag beats the variable; empty
        // values do not count.
        lookup.env = Some("env-key".into());
        assert_eq!(find(&lookup).unwrap(), ("env-key".into(), KeySource::Env));
        lookup.flag = Some(String::new());
        assert_eq!(find(&lookup).unwrap().1, KeySource::Env);
        lookup.flag = Some("flag-key".into());
        assert_eq!(find(&lookup).unwrap(), ("flag-key".into(), KeySource::Flag));
    }

    #[test]
    fn an_engine_database_without_a_key_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("engine.sqlite3");
        assert_eq!(read_engine_key(&db_path), None);
        assert!(!db_path.exists(), "looking must not create a database");
        let db = nullworker_engine::db::Db::open(&db_path).unwrap();
        assert_eq!(read_engine_key(&db_path), None);
        db.set_meta("account_key", "stored-key").unwrap();
        assert_eq!(read_engine_key(&db_path).as_deref(), Some("stored-key"));
    }
}
