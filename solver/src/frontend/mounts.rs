//! `RUN --mount`: BuildKit's CSV syntax, its keys and defaults per mount type, and the inputs
//! that bind and cache mounts add to the `Exec` vertex.

use hoist_parser::Flag;

use super::error::FrontendError;
use super::flags::flag_value;
use super::stage::StageState;

use crate::graph::VertexId;
use crate::op::{CacheSharing, Mount};

use super::*;

/// The keys `--mount` takes, for the message that refuses any other.
const KEYS: &str = "type, from, source (src), target (dst, destination), readonly (ro), \
                    readwrite (rw), id, sharing, required, mode, uid, gid, size, env";

/// A `--mount` value split into its fields, before defaults.
#[derive(Default)]
struct Fields {
    kind: Option<String>,
    from: Option<String>,
    source: Option<String>,
    target: Option<String>,
    read_only: Option<bool>,
    id: Option<String>,
    sharing: Option<String>,
    required: Option<bool>,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    env: Option<String>,
}

impl Lowering<'_> {
    /// The mounts of one RUN; the vertices they read are appended to `inputs` (input 0 is
    /// the RUN's root filesystem).
    pub(super) fn run_mounts(
        &mut self,
        state: &StageState,
        index: usize,
        step: &str,
        flags: &[&Flag],
        inputs: &mut Vec<VertexId>,
    ) -> Result<Vec<Mount>, FrontendError> {
        let mut mounts: Vec<Mount> = Vec::new();
        let mut ssh_count = 0;
        for flag in flags {
            let fields = self.mount_fields(state, flag)?;
            let mount = self.mount(state, index, step, flag, fields, &mut ssh_count, inputs)?;
            let target = mount_target(&mount);
            if let Some(t) = target
                && mounts.iter().any(|m| mount_target(m) == Some(t))
            {
                return Err(flag_value(
                    flag,
                    t.to_owned(),
                    "another --mount of this RUN has the same target",
                ));
            }
            mounts.push(mount);
        }
        Ok(mounts)
    }

    fn mount_fields(&self, state: &StageState, flag: &Flag) -> Result<Fields, FrontendError> {
        let raw = flag.value.as_deref().unwrap_or("");
        let bad = |value: &str, reason: &str| flag_value(flag, value.to_owned(), reason);
        let scope = state.scope();
        let mut fields = Fields::default();
        for field in csv_fields(raw).map_err(|reason| bad(raw, reason))? {
            let (key, value) = match field.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
                None => (field.to_ascii_lowercase(), None),
            };
            let Some(value) = value else {
                match key.as_str() {
                    "readonly" | "ro" => fields.read_only = Some(true),
                    "readwrite" | "rw" => fields.read_only = Some(false),
                    "required" => fields.required = Some(true),
                    _ => {
                        return Err(bad(
                            &field,
                            "every option but ro, rw and required needs a value (key=value)",
                        ));
                    }
                }
                continue;
            };
            let value = self.expand(value, &scope, flag.span)?;
            let boolean = |v: &str| {
                parse_bool(v).ok_or_else(|| bad(&field, "expected true or false (or 1 or 0)"))
            };
            let octal = |v: &str| {
                u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| bad(&field, "expected an octal mode such as 0755"))
            };
            let id_number = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| bad(&field, "expected a number from 0 to 4294967295"))
            };
            match key.as_str() {
                "type" => fields.kind = Some(value.to_ascii_lowercase()),
                "from" => fields.from = Some(value),
                "source" | "src" => fields.source = Some(value),
                "target" | "dst" | "destination" => fields.target = Some(value),
                "readonly" | "ro" => fields.read_only = Some(boolean(&value)?),
                "readwrite" | "rw" => fields.read_only = Some(!boolean(&value)?),
                "required" => fields.required = Some(boolean(&value)?),
                "id" => fields.id = Some(value),
                "sharing" => fields.sharing = Some(value.to_ascii_lowercase()),
                "mode" => fields.mode = Some(octal(&value)?),
                "uid" => fields.uid = Some(id_number(&value)?),
                "gid" => fields.gid = Some(id_number(&value)?),
                "size" => {
                    fields.size = Some(parse_size(&value).ok_or_else(|| {
                        bad(&field, "expected a size such as 64m, 1g or 4096 (bytes)")
                    })?);
                }
                "env" => fields.env = Some(value),
                _ => {
                    return Err(flag_value(
                        flag,
                        field.clone(),
                        &format!("unknown key {key:?}: --mount takes {KEYS}"),
                    ));
                }
            }
        }
        Ok(fields)
    }

    #[allow(clippy::too_many_arguments, clippy::too_many_lines)] // one mount's pieces; one table of types
    fn mount(
        &mut self,
        state: &StageState,
        index: usize,
        step: &str,
        flag: &Flag,
        f: Fields,
        ssh_count: &mut usize,
        inputs: &mut Vec<VertexId>,
    ) -> Result<Mount, FrontendError> {
        let kind = f.kind.clone().unwrap_or_else(|| "bind".to_owned());
        let bad =
            |reason: String| flag_value(flag, flag.value.clone().unwrap_or_default(), &reason);
        let not_for = |key: &str, set: bool| -> Result<(), FrontendError> {
            if set {
                Err(bad(format!("{key} is not an option of type={kind} mounts")))
            } else {
                Ok(())
            }
        };
        if !matches!(kind.as_str(), "cache" | "secret" | "ssh") {
            not_for("mode", f.mode.is_some())?;
            not_for("uid", f.uid.is_some())?;
            not_for("gid", f.gid.is_some())?;
        }
        if kind != "cache" {
            not_for("sharing", f.sharing.is_some())?;
        }
        if !matches!(kind.as_str(), "secret" | "ssh") {
            not_for("required", f.required.is_some())?;
        }
        if kind != "tmpfs" {
            not_for("size", f.size.is_some())?;
        }
        if kind != "secret" {
            not_for("env", f.env.is_some())?;
        }
        let workdir = state.workdir();
        let target = |required: bool| -> Result<Option<String>, FrontendError> {
            match f.target.as_deref().filter(|t| !t.is_empty()) {
                Some(t) => {
                    let absolute = join_path(&workdir, t);
                    if absolute == "/" {
                        return Err(bad("a mount cannot cover / (the RUN's root)".to_owned()));
                    }
                    Ok(Some(absolute))
                }
                None if required => Err(bad(format!(
                    "type={kind} mounts need a target=PATH (where the RUN sees the mount)"
                ))),
                None => Ok(None),
            }
        };
        let source = || join_path("/", f.source.as_deref().unwrap_or("/"));
        match kind.as_str() {
            "bind" => {
                let target = target(true)?.unwrap_or_default();
                let source = source();
                let (vertex, from) = match f.from.as_deref().filter(|s| !s.is_empty()) {
                    Some(from) => {
                        let (v, named) =
                            self.vertex_of_from(from, index, &state.platform, step, flag.span)?;
                        (v, Some(named))
                    }
                    None => (self.local_context(std::slice::from_ref(&source), &[]), None),
                };
                inputs.push(vertex);
                Ok(Mount::Bind {
                    input: inputs.len() - 1,
                    source,
                    target,
                    read_write: f.read_only == Some(false),
                    from,
                })
            }
            "cache" => {
                let target = target(true)?.unwrap_or_default();
                let sharing = match f.sharing.as_deref() {
                    None | Some("shared") => CacheSharing::Shared,
                    Some("private") => CacheSharing::Private,
                    Some("locked") => CacheSharing::Locked,
                    Some(other) => {
                        return Err(bad(format!(
                            "unknown sharing {other:?}: expected shared, private or locked"
                        )));
                    }
                };
                let seed = match f.from.as_deref().filter(|s| !s.is_empty()) {
                    Some(from) => {
                        let (v, _) =
                            self.vertex_of_from(from, index, &state.platform, step, flag.span)?;
                        inputs.push(v);
                        Some(inputs.len() - 1)
                    }
                    None => None,
                };
                Ok(Mount::Cache {
                    id: f
                        .id
                        .clone()
                        .filter(|s| !s.is_empty())
                        .unwrap_or(target.clone()),
                    target,
                    sharing,
                    seed,
                    source: source(),
                    read_only: f.read_only == Some(true),
                    mode: f.mode.unwrap_or(0o755),
                    uid: f.uid.unwrap_or(0),
                    gid: f.gid.unwrap_or(0),
                })
            }
            "tmpfs" => {
                not_for("from", f.from.is_some())?;
                Ok(Mount::Tmpfs {
                    target: target(true)?.unwrap_or_default(),
                    size: f.size,
                })
            }
            "secret" => {
                not_for("from", f.from.is_some())?;
                // BuildKit takes `source` as another name for the id of a secret.
                if f.source.is_some() && f.id.is_some() {
                    return Err(bad(
                        "source and id both name the secret: give one of them".to_owned()
                    ));
                }
                let target = target(false)?;
                let id = match f.id.clone().or(f.source.clone()).filter(|s| !s.is_empty()) {
                    Some(id) => id,
                    None => match &target {
                        Some(t) => t.rsplit('/').next().unwrap_or_default().to_owned(),
                        None => {
                            return Err(bad(
                                "a secret mount needs id=ID (or a target to take its name from)"
                                    .to_owned(),
                            ));
                        }
                    },
                };
                // Without a target, a secret exposed as a variable is not also a file.
                let target = match (target, &f.env) {
                    (Some(t), _) => Some(t),
                    (None, Some(_)) => None,
                    (None, None) => Some(format!("/run/secrets/{id}")),
                };
                Ok(Mount::Secret {
                    id,
                    target,
                    env: f.env.clone().filter(|s| !s.is_empty()),
                    required: f.required.unwrap_or(false),
                    mode: f.mode.unwrap_or(0o400),
                    uid: f.uid.unwrap_or(0),
                    gid: f.gid.unwrap_or(0),
                })
            }
            "ssh" => {
                not_for("from", f.from.is_some())?;
                let target = match target(false)? {
                    Some(t) => t,
                    None => format!("/run/buildkit/ssh_agent.{ssh_count}"),
                };
                *ssh_count += 1;
                Ok(Mount::Ssh {
                    id: f
                        .id
                        .clone()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "default".to_owned()),
                    target,
                    required: f.required.unwrap_or(false),
                    mode: f.mode.unwrap_or(0o600),
                    uid: f.uid.unwrap_or(0),
                    gid: f.gid.unwrap_or(0),
                })
            }
            other => Err(bad(format!(
                "unknown mount type {other:?}: expected bind, cache, tmpfs, secret or ssh"
            ))),
        }
    }
}

fn mount_target(m: &Mount) -> Option<&str> {
    match m {
        Mount::Bind { target, .. }
        | Mount::Cache { target, .. }
        | Mount::Tmpfs { target, .. }
        | Mount::Ssh { target, .. } => Some(target),
        Mount::Secret { target, .. } => target.as_deref(),
    }
}

/// One CSV record as Go's `encoding/csv` reads it (which BuildKit uses): fields split at
/// commas, a field that starts with `"` runs to its closing quote, `""` inside is one quote.
fn csv_fields(line: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field has no closing quote"),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(_) => return Err("a quoted field must end at a comma"),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote may only start a field"),
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A size as docker's `units.RAMInBytes` reads it: a number and an optional binary suffix
/// (`k`, `m`, `g`, `t`, `p`, with an optional `b` or `ib`), case-insensitive.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )] // a size written in a Dockerfile; fractions of a byte are dropped as Go does
    let bytes = (number * scale as f64) as u64;
    (number.is_finite() && number >= 0.0).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_follow_go_encoding_csv() {
        assert_eq!(
            csv_fields("type=cache,target=/a").unwrap(),
            ["type=cache", "target=/a"]
        );
        assert_eq!(
            csv_fields(r#""target=/a,b",ro"#).unwrap(),
            ["target=/a,b", "ro"]
        );
        assert_eq!(csv_fields(r#""a""b""#).unwrap(), [r#"a"b"#]);
        assert!(csv_fields(r#""open"#).is_err());
        assert!(csv_fields(r#"a"b"#).is_err());
    }

    #[test]
    fn sizes_read_as_docker_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("10kb"), Some(10 << 10));
        assert_eq!(parse_size("lots"), None);
    }
}
