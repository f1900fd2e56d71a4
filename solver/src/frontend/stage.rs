//! The state of a stage while it is lowered: its root vertex, config, ARG and ENV scope, and
//! history.

use crate::platform::Platform;
use hoist_parser::Command;

use super::config::{HistoryEntry, ImageConfig};
use super::scope::{EnvList, Scope, StageArgs};

use crate::graph::VertexId;

use super::*;

/// The state of a stage while its instructions apply.
pub(super) struct StageState {
    pub(super) root: VertexId,
    /// The image config; its `env` stays empty while the stage lowers, in [`Self::env`].
    pub(super) config: ImageConfig,
    pub(super) author: Option<String>,
    pub(super) history: Vec<HistoryEntry>,
    pub(super) platform: Platform,
    /// The image ENV, indexed by name.
    pub(super) env: EnvList,
    /// ARGs declared in this stage, with their values.
    pub(super) args: StageArgs,
    /// Whether this stage set CMD (so a later ENTRYPOINT keeps it).
    pub(super) cmd_set: bool,
    /// What the build checks track.
    pub(super) lint: super::lint::StageLint,
}

impl StageState {
    pub(super) fn from_base(
        root: VertexId,
        mut config: ImageConfig,
        history: Vec<HistoryEntry>,
        platform: Platform,
    ) -> Self {
        let env = EnvList::new(std::mem::take(&mut config.env));
        Self {
            root,
            config,
            author: None,
            history,
            platform,
            env,
            args: StageArgs::default(),
            cmd_set: false,
            lint: super::lint::StageLint::default(),
        }
    }

    pub(super) fn finish(self) -> Lowered {
        let mut config = self.config;
        config.env = self.env.into_entries();
        Lowered {
            root: self.root,
            config,
            author: self.author,
            history: self.history,
            platform: self.platform,
            lint: self.lint,
            args: self.args,
        }
    }

    /// The variables words expand against: ENV first, then the declared ARGs.
    pub(super) fn scope(&self) -> Scope<'_> {
        Scope {
            env: &self.env,
            args: &self.args,
        }
    }

    pub(super) fn shell(&self) -> Vec<String> {
        if self.config.shell.is_empty() {
            DEFAULT_SHELL.iter().map(|s| (*s).to_owned()).collect()
        } else {
            self.config.shell.clone()
        }
    }

    pub(super) fn workdir(&self) -> String {
        if self.config.working_dir.is_empty() {
            "/".to_owned()
        } else {
            self.config.working_dir.clone()
        }
    }

    pub(super) fn command_args(&self, command: Option<&Command>) -> Vec<String> {
        match command {
            Some(Command::Exec { args, .. }) => args.clone(),
            Some(Command::Shell { text, .. }) => {
                let mut args = self.shell();
                args.push(text.clone());
                args
            }
            None => Vec::new(),
        }
    }

    pub(super) fn history_config(&mut self, text: String) {
        self.history_entry(text, true);
    }

    /// A history entry for a step that made a layer.
    pub(super) fn history_layer(&mut self, created_by: String) {
        self.history_entry(created_by, false);
    }

    pub(super) fn history_entry(&mut self, created_by: String, empty_layer: bool) {
        self.history.push(HistoryEntry {
            created: None,
            author: None,
            created_by,
            comment: Some(HISTORY_COMMENT.into()),
            empty_layer,
        });
    }
}
