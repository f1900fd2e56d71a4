//! The variables of a stage while it lowers: the image ENV and the declared ARGs, each indexed
//! by name, so that setting or reading one costs the same however many came before. A file of
//! many ENV lines then lowers in linear time: nothing here copies or rescans the list per
//! instruction.

use std::collections::HashMap;

use hoist_parser::shell::Env;

/// The positions in [`EnvList::entries`] of the entries with one name.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The last entry with this name, `K=V` or a bare `K`: what word expansion reads.
    last: usize,
    /// The first `K=V` entry: what a new ENV of this name replaces.
    first_value: Option<usize>,
    /// The last `K=V` entry: what [`EnvList::get`] reads.
    last_value: Option<usize>,
}

/// The image ENV as the config lists it (`K=V` strings, in order), indexed by name.
///
/// A base image's list may repeat a name or hold a bare `K`; they are kept as they are, and
/// the positions in [`Slot`] keep reads and writes exactly as a scan of the list would do
/// them.
#[derive(Clone, Debug, Default)]
pub(super) struct EnvList {
    entries: Vec<String>,
    index: HashMap<String, Slot>,
}

impl EnvList {
    pub(super) fn new(entries: Vec<String>) -> Self {
        let mut list = Self {
            entries: Vec::with_capacity(entries.len()),
            index: HashMap::with_capacity(entries.len()),
        };
        for entry in entries {
            list.push(entry);
        }
        list
    }

    fn push(&mut self, entry: String) {
        let at = self.entries.len();
        let (name, has_value) = match entry.split_once('=') {
            Some((name, _)) => (name, true),
            None => (entry.as_str(), false),
        };
        let slot = match self.index.get_mut(name) {
            Some(slot) => slot,
            None => self.index.entry(name.to_owned()).or_insert(Slot {
                last: at,
                first_value: None,
                last_value: None,
            }),
        };
        slot.last = at;
        if has_value {
            slot.first_value.get_or_insert(at);
            slot.last_value = Some(at);
        }
        self.entries.push(entry);
    }

    /// The value of `key`, from its last `K=V` entry.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        let at = self.index.get(key)?.last_value?;
        self.entries[at].split_once('=').map(|(_, v)| v)
    }

    /// The value word expansion sees: from the last entry of that name, empty for a bare `K`.
    fn lookup(&self, key: &str) -> Option<&str> {
        let at = self.index.get(key)?.last;
        let entry = &self.entries[at];
        Some(entry.split_once('=').map_or("", |(_, v)| v))
    }

    /// Whether any entry, `K=V` or bare, has this name.
    pub(super) fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Sets `key`, replacing its first `K=V` entry in place, or appending one.
    pub(super) fn set(&mut self, key: &str, value: &str) {
        let mut entry = String::with_capacity(key.len() + 1 + value.len());
        entry.push_str(key);
        entry.push('=');
        entry.push_str(value);
        match self.index.get(key).and_then(|slot| slot.first_value) {
            Some(at) => self.entries[at] = entry,
            None => self.push(entry),
        }
    }

    /// The entries as `(name, value)` pairs, in order; a bare `K` has an empty value.
    pub(super) fn pairs(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }

    /// The list, for the image config.
    pub(super) fn into_entries(self) -> Vec<String> {
        self.entries
    }
}

/// The ARGs a stage declared, in order of first declaration, with their values, and which of
/// them were given a value after the last ENV of their name.
///
/// This is BuildKit's rule (`dispatchArg` adds a valued ARG to the state's environment with
/// `AddEnv`): an ARG that gets a value (a `--build-arg`, its default, or the global value it
/// imports) sets that variable for the steps after it, even over an earlier ENV of the same
/// name; an ENV after it wins again. An ARG without a value changes nothing. The image config
/// keeps the ENV's value either way.
#[derive(Clone, Debug, Default)]
pub(super) struct StageArgs {
    list: Vec<(String, Option<String>)>,
    index: HashMap<String, usize>,
    /// Names whose latest value came from an ARG, not an ENV.
    over_env: std::collections::HashSet<String>,
}

impl StageArgs {
    /// Declares `name`, with the value it gets, if any. A declaration without one keeps the
    /// value an earlier one gave (as BuildKit's environment does); every declaration keeps the
    /// name's first position.
    pub(super) fn declare(&mut self, name: &str, value: Option<String>) {
        let has_value = value.is_some();
        match self.index.get(name) {
            Some(&at) => {
                if has_value {
                    self.list[at].1 = value;
                }
            }
            None => {
                self.index.insert(name.to_owned(), self.list.len());
                self.list.push((name.to_owned(), value));
            }
        }
        if has_value {
            self.over_env.insert(name.to_owned());
        }
    }

    /// An ENV set `name`: from here on its value wins over the ARG's.
    pub(super) fn env_set(&mut self, name: &str) {
        self.over_env.remove(name);
    }

    /// The value of `name`, if it was declared with one.
    fn value(&self, name: &str) -> Option<&str> {
        let &at = self.index.get(name)?;
        self.list[at].1.as_deref()
    }

    /// The value of `name` when it wins over the ENV of that name.
    pub(super) fn over_env(&self, name: &str) -> Option<&str> {
        if self.over_env.contains(name) {
            self.value(name)
        } else {
            None
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.list.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }
}

/// What words of a stage expand against, and what its RUN steps see: the image ENV and the
/// valued ARGs, the later of the two winning for a name (see [`StageArgs`]). Borrowed from
/// the stage, so that making one per instruction costs nothing.
#[derive(Clone, Copy)]
pub(super) struct Scope<'s> {
    pub(super) env: &'s EnvList,
    pub(super) args: &'s StageArgs,
}

impl Scope<'_> {
    /// The environment of a RUN: the image ENV in its order, each name with its winning value,
    /// then the valued ARGs that no ENV names.
    pub(super) fn run_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.pairs();
        for (k, v) in &mut env {
            if let Some(arg) = self.args.over_env(k) {
                arg.clone_into(v);
            }
        }
        for (k, v) in self.args.iter() {
            if let Some(v) = v
                && !self.env.contains(k)
            {
                env.push((k.to_owned(), v.to_owned()));
            }
        }
        env
    }
}

impl Env for Scope<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.args
            .over_env(key)
            .or_else(|| self.env.lookup(key))
            .or_else(|| self.args.value(key))
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .env
            .index
            .keys()
            .map(String::as_str)
            .chain(
                self.args
                    .list
                    .iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(k, _)| k.as_str()),
            )
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> EnvList {
        EnvList::new(entries.iter().map(|e| (*e).to_owned()).collect())
    }

    #[test]
    fn a_repeated_name_reads_the_last_entry_and_an_env_replaces_the_first() {
        // A base image may list a name twice; reading takes the last, ENV replaces the first,
        // as a scan of the config's list does.
        let mut env = list(&["A=1", "B=2", "A=3"]);
        assert_eq!(env.get("A"), Some("3"));
        env.set("A", "9");
        assert_eq!(env.into_entries(), ["A=9", "B=2", "A=3"]);
    }

    #[test]
    fn a_bare_name_expands_empty_but_has_no_value() {
        let mut env = list(&["A=1", "A"]);
        let args = StageArgs::default();
        let scope = Scope {
            env: &env,
            args: &args,
        };
        assert_eq!(Env::get(&scope, "A"), Some(""));
        assert_eq!(env.get("A"), Some("1"));
        assert!(env.contains("A"));
        env.set("A", "2");
        assert_eq!(env.into_entries(), ["A=2", "A"]);
    }

    #[test]
    fn a_key_with_an_equals_sign_is_appended_under_its_first_part() {
        let mut env = list(&["A=1"]);
        env.set("A=B", "C");
        assert_eq!(env.get("A"), Some("B=C"));
        assert_eq!(env.into_entries(), ["A=1", "A=B=C"]);
    }

    #[test]
    fn the_later_of_env_and_a_valued_arg_wins_and_an_arg_without_a_value_changes_nothing() {
        let mut env = list(&["A=env", "D=env"]);
        let mut args = StageArgs::default();
        // ENV A, then ARG A=arg: the ARG wins (BuildKit's AddEnv), the config keeps the ENV.
        args.declare("A", Some("arg".into()));
        args.declare("B", None);
        args.declare("C", Some("c".into()));
        args.declare("B", Some("b".into()));
        // A second ARG C without a value keeps the value the first gave.
        args.declare("C", None);
        // ARG D, then ENV D: the ENV wins again.
        args.declare("D", Some("arg".into()));
        env.set("D", "env2");
        args.env_set("D");
        let scope = Scope {
            env: &env,
            args: &args,
        };
        assert_eq!(Env::get(&scope, "A"), Some("arg"));
        assert_eq!(Env::get(&scope, "B"), Some("b"));
        assert_eq!(Env::get(&scope, "C"), Some("c"));
        assert_eq!(Env::get(&scope, "D"), Some("env2"));
        assert_eq!(scope.keys(), ["A", "B", "C", "D"]);
        let run: Vec<String> = scope
            .run_env()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(run, ["A=arg", "D=env2", "B=b", "C=c"]);
        assert_eq!(env.get("A"), Some("env"));
        let order: Vec<&str> = args.iter().map(|(k, _)| k).collect();
        assert_eq!(order, ["A", "B", "C", "D"]);
    }
}
