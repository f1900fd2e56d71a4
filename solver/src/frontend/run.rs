//! RUN: the shell or exec form, its flags (network, security), heredoc scripts, and the
//! `Exec` op with the environment in scope.

use std::borrow::Cow;

use hoist_parser::shell::{Env, Lexer};
use hoist_parser::{Command, Heredoc, Span};

use super::error::{FrontendError, FrontendErrorKind};

use crate::op::{ExecOp, NetworkMode, Op};

use super::*;

impl Lowering<'_> {
    pub(super) fn run(
        &mut self,
        state: &mut StageState,
        index: usize,
        step: &str,
        run: &hoist_parser::RunInstruction,
        text: &str,
        span: Span,
    ) -> Result<(), FrontendError> {
        let flags = check_flags(
            &run.flags,
            "RUN",
            &["network", "security", "mount"],
            &["mount"],
        )?;
        let mut inputs = vec![state.root];
        let mount_flags: Vec<_> = flags.get_all("mount").collect();
        let mounts = self.run_mounts(state, index, step, &mount_flags, &mut inputs)?;
        let scope = state.scope();
        let network = match flags.get("network") {
            None => self.opts.network,
            Some(flag) => {
                let value = self.expand(flag.value.as_deref().unwrap_or(""), &scope, flag.span)?;
                match value.as_str() {
                    "default" => NetworkMode::Default,
                    "none" => NetworkMode::None,
                    // As in BuildKit, a Dockerfile line alone may not put a step in the host's
                    // network namespace, where it reaches every service on the host's loopback.
                    "host" if self.opts.allow_network_host => NetworkMode::Host,
                    "host" => {
                        return Err(flag_value(
                            flag,
                            value,
                            "the network.host entitlement is not granted to this build; \
                             grant it with --allow network.host",
                        ));
                    }
                    _ => return Err(flag_value(flag, value, "expected default, none or host")),
                }
            }
        };
        let privileged = match flags.get("security") {
            None => false,
            Some(flag) => {
                let value = self.expand(flag.value.as_deref().unwrap_or(""), &scope, flag.span)?;
                match value.as_str() {
                    "sandbox" => false,
                    "insecure" if self.opts.allow_insecure => true,
                    "insecure" => {
                        return Err(flag_value(
                            flag,
                            value,
                            "the security.insecure entitlement is not granted to this build; \
                             grant it with --allow security.insecure",
                        ));
                    }
                    _ => return Err(flag_value(flag, value, "expected sandbox or insecure")),
                }
            }
        };
        let args = match &run.command {
            Some(Command::Exec { args, .. }) => args.clone(),
            Some(Command::Shell { text: cmd, .. }) => {
                let mut args = state.shell();
                args.push(run_script(cmd, &run.heredocs, &scope, self.escape)?);
                args
            }
            None => {
                return Err(FrontendError::new(
                    FrontendErrorKind::Arity {
                        instruction: "RUN",
                        expected: "a command",
                    },
                    span,
                ));
            }
        };
        // The image ENV with the valued ARGs over it where they came later (see `StageArgs`).
        let env = scope.run_env();
        // History lists every ARG of the stage with the value the command sees (an ARG without
        // a value shows as `K=`), as BuildKit does.
        let from_args: Vec<String> = state
            .args
            .iter()
            .map(|(k, _)| format!("{k}={}", scope.get(k).unwrap_or_default()))
            .collect();
        let created_by = if from_args.is_empty() {
            format!("RUN {} # buildkit", args.join(" "))
        } else {
            format!(
                "RUN |{} {} {} # buildkit",
                from_args.len(),
                from_args.join(" "),
                args.join(" ")
            )
        };
        let cwd = state.workdir();
        state.root = self.graph.add(
            Op::Exec(ExecOp {
                args,
                env,
                cwd,
                user: state.config.user.clone(),
                network,
                privileged,
                mounts,
                epoch: self.epoch(),
            }),
            inputs,
            format!("{step} {text}"),
            self.location(span),
        );
        state.history_layer(created_by);
        Ok(())
    }
}

/// The script a shell-form RUN runs. A RUN that is only a heredoc runs its body; any other
/// command gets its heredoc bodies back after it, so the shell reads them as it would from a
/// script.
pub(super) fn run_script(
    cmd: &str,
    heredocs: &[Heredoc],
    scope: &dyn Env,
    escape: char,
) -> Result<String, FrontendError> {
    if heredocs.is_empty() {
        return Ok(cmd.to_owned());
    }
    if let [doc] = heredocs
        && heredoc_word(cmd.trim()) == Some(doc.name.as_str())
    {
        return heredoc_content(doc, scope, escape);
    }
    let mut script = cmd.to_owned();
    for doc in heredocs {
        script.push('\n');
        script.push_str(&doc.content);
        script.push_str(&doc.name);
    }
    Ok(script)
}

/// The delimiter a word like `<<EOF`, `<<-"EOF"` or `3<<EOF` names.
pub(super) fn heredoc_word(word: &str) -> Option<&str> {
    let rest = word
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .strip_prefix("<<")?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    Some(rest.trim_matches(['"', '\'']))
}

pub(super) fn heredoc_content(
    doc: &Heredoc,
    scope: &dyn Env,
    escape: char,
) -> Result<String, FrontendError> {
    // A body may be many megabytes: it is copied once, by the chomp or the expansion.
    let content = if doc.chomp {
        Cow::Owned(hoist_parser::heredoc::chomp(&doc.content))
    } else {
        Cow::Borrowed(doc.content.as_str())
    };
    if !doc.expand {
        return Ok(content.into_owned());
    }
    Lexer::new(escape)
        .skip_process_quotes(true)
        .process_word(&content, scope)
        .map_err(expand_error(&doc.name, doc.span))
}
