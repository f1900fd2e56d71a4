//! The image config a stage builds up: what `docker inspect` shows under `Config`, plus
//! history. Field names follow Docker's JSON, which the OCI config shares and extends
//! (Healthcheck, OnBuild and Shell are Docker's).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The runtime config of an image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeSet::is_empty",
        with = "set_as_map"
    )]
    pub exposed_ports: BTreeSet<String>,
    /// `KEY=value`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "BTreeSet::is_empty",
        with = "set_as_map"
    )]
    pub volumes: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_build: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shell: Vec<String>,
}

/// Docker's `Healthcheck`: durations in nanoseconds, 0 meaning the default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", args…]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
const fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One entry of the image history, as `docker history` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// RFC 3339; a base image's entries keep theirs, the build fills in its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True for instructions that change only the config.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// The value of an environment variable.
    #[must_use]
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env.iter().rev().find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v)
        })
    }

    /// Sets an environment variable, replacing an earlier value in place.
    pub fn env_set(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self
            .env
            .iter_mut()
            .find(|kv| kv.split_once('=').is_some_and(|(k, _)| k == key))
        {
            Some(slot) => *slot = entry,
            None => self.env.push(entry),
        }
    }

    /// The environment as pairs.
    #[must_use]
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }

    /// The OCI form of this config, for the image. The strings move rather than copy: a
    /// Dockerfile of many or long ENV and LABEL lines makes a config of many megabytes. Empty
    /// fields are left out, as this type's JSON leaves them out. Docker's extras (Healthcheck,
    /// OnBuild, Shell) have no place in the OCI type: take them out first.
    #[must_use]
    pub fn into_oci(self) -> oci_spec::image::Config {
        let mut oci = oci_spec::image::Config::default();
        oci.set_user(non_empty(self.user));
        oci.set_exposed_ports(non_empty_list(self.exposed_ports.into_iter().collect()));
        oci.set_env(non_empty_list(self.env));
        oci.set_entrypoint(self.entrypoint);
        oci.set_cmd(self.cmd);
        oci.set_volumes(non_empty_list(self.volumes.into_iter().collect()));
        oci.set_working_dir(non_empty(self.working_dir));
        oci.set_labels((!self.labels.is_empty()).then(|| self.labels.into_iter().collect()));
        oci.set_stop_signal(non_empty(self.stop_signal));
        oci
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn non_empty_list(list: Vec<String>) -> Option<Vec<String>> {
    (!list.is_empty()).then_some(list)
}

impl HistoryEntry {
    /// The OCI form of this entry, dated `created` unless it has a date (a base image's
    /// entries keep theirs).
    #[must_use]
    pub fn into_oci(self, created: &str) -> oci_spec::image::History {
        let mut oci = oci_spec::image::History::default();
        oci.set_created(Some(self.created.unwrap_or_else(|| created.to_owned())));
        oci.set_author(self.author);
        oci.set_created_by(Some(self.created_by));
        oci.set_comment(self.comment);
        oci.set_empty_layer(self.empty_layer.then_some(true));
        oci
    }
}

/// Docker writes sets such as `ExposedPorts` as objects with empty values.
mod set_as_map {
    use std::collections::{BTreeMap, BTreeSet};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Empty {}

    pub(super) fn serialize<S: Serializer>(
        set: &BTreeSet<String>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let map: BTreeMap<&String, Empty> = set.iter().map(|k| (k, Empty {})).collect();
        map.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeSet<String>, D::Error> {
        let map = Option::<BTreeMap<String, serde_json::Value>>::deserialize(d)?;
        Ok(map.unwrap_or_default().into_keys().collect())
    }
}
