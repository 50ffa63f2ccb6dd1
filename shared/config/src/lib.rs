//! Configuration for every CheXVision service and tool.
//!
//! Layers, later wins: the struct's defaults, a YAML file (which may name files
//! it `inherits` from), `CHEXVISION_*` environment variables, then explicit
//! overrides such as command-line flags. Every value remembers where it came
//! from, so an error names the key and the file (or variable) that set it.
//!
//! Environment names: `CHEXVISION_` + the key path in upper case, with `__`
//! between levels: `CHEXVISION_STORE`, `CHEXVISION_KAFKA__PARTITIONS`,
//! `CHEXVISION_TOPICS__DEAD_LETTER`. Variables whose first level is not a key
//! of the configuration are ignored, so unrelated `CHEXVISION_*` variables
//! (test switches, say) do no harm.

mod platform;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use serde::{de::DeserializeOwned, Serialize};
use serde_yaml::{Mapping, Value};

pub use platform::*;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "CHEXVISION_";
/// Key that lists parent files of a config file.
pub const INHERITS_KEY: &str = "inherits";

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Override(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("built-in default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Override(what) => f.write_str(what),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("config file {path}: {message}")]
    Structure { path: PathBuf, message: String },
    #[error("config file {path} inherits from itself (through {chain})")]
    InheritanceCycle { path: PathBuf, chain: String },
    #[error("config key `{key}` (from {origin}): {message}")]
    Invalid {
        key: String,
        origin: Source,
        message: String,
    },
}

/// Checks beyond types: each problem is the key and what is wrong with it.
pub trait Validate {
    fn validate(&self) -> Vec<(String, String)>;
}

/// Builds one configuration from its layers.
pub struct Loader {
    file: Option<PathBuf>,
    env: Vec<(String, String)>,
    overrides: Vec<(String, String, String)>,
}

impl Default for Loader {
    fn default() -> Self {
        Self::new()
    }
}

impl Loader {
    /// A loader that reads the process environment.
    pub fn new() -> Self {
        Loader {
            file: None,
            env: std::env::vars().collect(),
            overrides: Vec::new(),
        }
    }

    /// Replaces the environment (for tests and embedding).
    pub fn with_env<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    pub fn file(mut self, path: Option<impl AsRef<Path>>) -> Self {
        self.file = path.map(|p| p.as_ref().to_path_buf());
        self
    }

    /// Applies the `--store` and `--bus` flags every command and service takes.
    pub fn store_and_bus_flags(mut self, store: Option<&str>, bus: Option<&str>) -> Self {
        if let Some(store) = store {
            self = self.override_value("store", store, "flag --store");
        }
        if let Some(bus) = bus {
            self = self.override_value("bus", bus, "flag --bus");
        }
        self
    }

    /// Sets `key` (dotted path) to `value` (YAML scalar), naming the origin for errors,
    /// e.g. `override_value("store", uri, "flag --store")`.
    pub fn override_value(mut self, key: &str, value: &str, origin: &str) -> Self {
        self.overrides
            .push((key.to_owned(), value.to_owned(), origin.to_owned()));
        self
    }

    pub fn load<T>(self) -> Result<T, ConfigError>
    where
        T: Serialize + DeserializeOwned + Default + Validate,
    {
        let mut tree = Mapping::new();
        let mut sources: BTreeMap<String, Source> = BTreeMap::new();

        if let Some(path) = &self.file {
            let mut chain = Vec::new();
            let file_tree = read_with_inheritance(path, &mut chain)?;
            merge(&mut tree, file_tree.0, &mut sources, &file_tree.1, "");
        }

        let top_level_keys = top_level_keys::<T>();
        // Key → (its path, the raw text). The path is kept, not re-split
        // from the key: a map key may hold dots (`kafka.properties.linger.ms`).
        let mut raw_env_values: BTreeMap<String, (Vec<String>, String)> = BTreeMap::new();
        let mut env: Vec<_> = self.env.iter().collect();
        env.sort();
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) || !top_level_keys.contains(&path[0]) {
                continue;
            }
            let key = path.join(".");
            set_path(&mut tree, &path, scalar(raw));
            sources.insert(key.clone(), Source::Env(var.clone()));
            raw_env_values.insert(key, (path, raw.clone()));
        }
        for (key, raw, origin) in &self.overrides {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            set_path(&mut tree, &path, scalar(raw));
            sources.insert(key.clone(), Source::Override(origin.clone()));
            raw_env_values.insert(key.clone(), (path, raw.clone()));
        }

        // A value such as `0123` or `true` set from the environment may be meant
        // as a string: when a typed reading fails on such a key, retry it as a string.
        let mut retried = Vec::new();
        let config: T = loop {
            let result: Result<T, _> =
                serde_path_to_error::deserialize(Value::Mapping(tree.clone()));
            match result {
                Ok(config) => break config,
                Err(err) => {
                    let key = err.path().to_string();
                    if let Some((path, raw)) = raw_env_values.get(&key) {
                        if !retried.contains(&key) {
                            retried.push(key.clone());
                            set_path(&mut tree, path, Value::String(raw.clone()));
                            continue;
                        }
                    }
                    return Err(invalid(&sources, key, err.inner().to_string()));
                }
            }
        };

        if let Some((key, message)) = config.validate().into_iter().next() {
            return Err(invalid(&sources, key, message));
        }
        Ok(config)
    }
}

fn invalid(sources: &BTreeMap<String, Source>, key: String, message: String) -> ConfigError {
    let origin = source_of(sources, &key);
    let key = if key == "." || key.is_empty() {
        "(top level)".to_owned()
    } else {
        key
    };
    ConfigError::Invalid {
        key,
        origin,
        message,
    }
}

/// The source of `key`, or of the closest enclosing or enclosed key that has one.
fn source_of(sources: &BTreeMap<String, Source>, key: &str) -> Source {
    let mut candidate = key;
    loop {
        if let Some(source) = sources.get(candidate) {
            return source.clone();
        }
        match candidate.rfind('.') {
            Some(i) => candidate = &candidate[..i],
            None => break,
        }
    }
    // An unknown key deeper than any known value: any value under it names the file.
    let prefix = format!("{key}.");
    sources
        .iter()
        .find(|(k, _)| k.starts_with(&prefix))
        .map(|(_, s)| s.clone())
        .or_else(|| {
            // Unknown top-level keys come from the file, if there is one.
            sources
                .values()
                .find(|s| matches!(s, Source::File(_)))
                .cloned()
        })
        .unwrap_or(Source::Default)
}

fn top_level_keys<T: Serialize + Default>() -> Vec<String> {
    match serde_yaml::to_value(T::default()) {
        Ok(Value::Mapping(map)) => map
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Reads `path` and the files it inherits from, parents first. Returns the merged
/// tree and, per leaf, the file that set it.
fn read_with_inheritance(
    path: &Path,
    chain: &mut Vec<PathBuf>,
) -> Result<(Mapping, BTreeMap<String, Source>), ConfigError> {
    let canonical = path.canonicalize().map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if chain.contains(&canonical) {
        let chain_text = chain
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" -> ");
        return Err(ConfigError::InheritanceCycle {
            path: path.to_path_buf(),
            chain: chain_text,
        });
    }
    chain.push(canonical);
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let mut own = match value {
        Value::Mapping(map) => map,
        Value::Null => Mapping::new(),
        other => {
            return Err(ConfigError::Structure {
                path: path.to_path_buf(),
                message: format!(
                    "the top level must be a mapping of keys, found {}",
                    kind_of(&other)
                ),
            })
        }
    };
    let parents: Vec<String> = match own.remove(INHERITS_KEY) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(one)) => vec![one],
        Some(Value::Sequence(list)) => list
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(ConfigError::Structure {
                    path: path.to_path_buf(),
                    message: format!("`inherits` lists file names, found {}", kind_of(&other)),
                }),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ConfigError::Structure {
                path: path.to_path_buf(),
                message: format!(
                    "`inherits` must be a file name or a list of them, found {}",
                    kind_of(&other)
                ),
            })
        }
    };

    let mut tree = Mapping::new();
    let mut sources = BTreeMap::new();
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    for parent in parents {
        let (parent_tree, parent_sources) = read_with_inheritance(&dir.join(parent), chain)?;
        merge(&mut tree, parent_tree, &mut sources, &parent_sources, "");
    }
    let own_source = BTreeMap::from([(String::new(), Source::File(path.to_path_buf()))]);
    merge(&mut tree, own, &mut sources, &own_source, "");
    chain.pop();
    Ok((tree, sources))
}

/// Deep-merges `overlay` into `base`; mappings merge key by key, anything else
/// replaces. Records the source of each leaf: the overlay's own record for that
/// key if it has one, else its root record (key "").
fn merge(
    base: &mut Mapping,
    overlay: Mapping,
    sources: &mut BTreeMap<String, Source>,
    overlay_sources: &BTreeMap<String, Source>,
    prefix: &str,
) {
    for (key, value) in overlay {
        let Some(name) = key.as_str().map(str::to_owned) else {
            continue;
        };
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match (base.get_mut(&key), value) {
            (Some(Value::Mapping(existing)), Value::Mapping(incoming)) => {
                merge(existing, incoming, sources, overlay_sources, &path);
            }
            (_, value) => {
                record_sources(&value, &path, sources, overlay_sources);
                base.insert(key, value);
            }
        }
    }
}

fn record_sources(
    value: &Value,
    path: &str,
    sources: &mut BTreeMap<String, Source>,
    overlay_sources: &BTreeMap<String, Source>,
) {
    let source = overlay_sources
        .get(path)
        .or_else(|| overlay_sources.get(""))
        .cloned()
        .unwrap_or(Source::Default);
    sources.insert(path.to_owned(), source);
    if let Value::Mapping(map) = value {
        for (k, v) in map {
            if let Some(name) = k.as_str() {
                record_sources(v, &format!("{path}.{name}"), sources, overlay_sources);
            }
        }
    }
}

fn set_path(tree: &mut Mapping, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = tree;
    for part in parents {
        let key = Value::String(part.clone());
        if !matches!(node.get(&key), Some(Value::Mapping(_))) {
            node.insert(key.clone(), Value::Mapping(Mapping::new()));
        }
        node = match node.get_mut(&key) {
            Some(Value::Mapping(map)) => map,
            _ => unreachable!("inserted a mapping just above"),
        };
    }
    node.insert(Value::String(last.clone()), value);
}

/// Reads an environment value as a YAML scalar or flow sequence; anything that
/// would become a mapping (a stray `: `) stays a plain string.
fn scalar(raw: &str) -> Value {
    match serde_yaml::from_str::<Value>(raw) {
        Ok(Value::Mapping(_)) | Err(_) => Value::String(raw.to_owned()),
        Ok(Value::Null) if !raw.trim().is_empty() && raw.trim() != "null" && raw.trim() != "~" => {
            Value::String(raw.to_owned())
        }
        Ok(value) => value,
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests;
