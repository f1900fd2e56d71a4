//! ADD of a git repository: the commit a reference resolves to is the content key, and the
//! checkout of that commit (its `subdir`, without `.git` unless `--keep-git-dir`) is a
//! one-layer filesystem for the COPY that puts it in place.
//!
//! This drives the `git` program rather than a library: it already speaks every transport a
//! Dockerfile names (ssh with the build's agent, smart http with proxies and credentials,
//! the git protocol) and is what BuildKit runs too. Credentials never enter the URL, the key,
//! a layer or a message: a token (the build's secret `GIT_AUTH_TOKEN`, as in BuildKit) goes
//! to git as an `http.extraHeader` through `GIT_CONFIG_*` variables, and ssh reaches the
//! agent of `--ssh default` through `SSH_AUTH_SOCK`.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::path::{Component, Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use tokio::process::Command;

use crate::error::WorkerError;
use crate::{BuildWorker, Layer};

/// Why a git source could not be added.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {source}; install git to ADD git repositories")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("git {action} of {remote} failed ({status}): {stderr}")]
    Command {
        action: &'static str,
        remote: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(
        "git reference {reference:?} not found in {remote}: name a branch, a tag or a full \
         commit of that repository"
    )]
    RefNotFound { remote: String, reference: String },
    #[error(
        "{remote} at {reference:?} is commit {commit}, not the {expected} that --checksum \
         expects; fix the checksum or the reference"
    )]
    Checksum {
        remote: String,
        reference: String,
        commit: String,
        expected: String,
    },
    #[error("subdirectory {subdir:?} of {remote} at commit {commit}: {reason}")]
    Subdir {
        remote: String,
        subdir: String,
        commit: String,
        reason: &'static str,
    },
    #[error("read the secret GIT_AUTH_TOKEN: {0}")]
    Secret(#[source] crate::session::SessionError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// What git needs besides the URL: the environment that carries the build's credentials.
struct Auth {
    env: Vec<(String, String)>,
}

impl BuildWorker {
    /// The commit `reference` of `remote` resolves to (the remote's HEAD when empty), checked
    /// against `checksum`: the content key of a git source.
    pub(crate) async fn git_commit(
        &self,
        remote: &str,
        reference: &str,
        checksum: Option<&str>,
    ) -> Result<String, GitError> {
        let commit = if is_commit(reference) {
            reference.to_ascii_lowercase()
        } else {
            let auth = self.git_auth(remote).await?;
            let pattern = if reference.is_empty() {
                "HEAD"
            } else {
                reference
            };
            // A pattern lists an annotated tag without the commit it points to, unless
            // that peeled name is asked for too.
            let peeled = format!("{pattern}^{{}}");
            let out = git(&auth, None, &["ls-remote", "--", remote, pattern, &peeled]).await?;
            let listing = checked(out, "ls-remote", remote)?;
            pick_ref(&String::from_utf8_lossy(&listing.stdout), pattern).ok_or_else(|| {
                GitError::RefNotFound {
                    remote: remote.to_owned(),
                    reference: pattern.to_owned(),
                }
            })?
        };
        if let Some(expected) = checksum
            && !commit.starts_with(expected)
        {
            return Err(GitError::Checksum {
                remote: remote.to_owned(),
                reference: reference.to_owned(),
                commit,
                expected: expected.to_owned(),
            });
        }
        Ok(commit)
    }

    /// A layer of `commit`'s tree under `subdir`.
    pub(crate) async fn git_checkout(
        &self,
        remote: &str,
        commit: &str,
        subdir: &str,
        keep_git_dir: bool,
    ) -> Result<Layer, GitError> {
        let auth = self.git_auth(remote).await?;
        let scratch = self.state.scratch()?;
        let repo = scratch.path().join("repo");
        let run = |args: Vec<String>, action: &'static str| {
            let auth = &auth;
            let repo = repo.clone();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = git(auth, Some(&repo), &args).await?;
                checked(out, action, remote)
            }
        };
        fs_err::create_dir(&repo).map_err(crate::error::io_err("create", &repo))?;
        run(vec!["init".into(), "--quiet".into()], "init").await?;
        // By commit, so that what is checked out is what was keyed even if the branch has
        // moved since; protocol v2 servers serve any commit asked for.
        run(
            vec![
                "fetch".into(),
                "--quiet".into(),
                "--depth=1".into(),
                "--no-tags".into(),
                "--".into(),
                remote.to_owned(),
                commit.to_owned(),
            ],
            "fetch",
        )
        .await?;
        run(
            vec![
                "-c".into(),
                "advice.detachedHead=false".into(),
                "checkout".into(),
                "--quiet".into(),
                commit.to_owned(),
            ],
            "checkout",
        )
        .await?;
        if keep_git_dir {
            // As a clone would leave it: a remote named origin to fetch from later.
            run(
                vec![
                    "remote".into(),
                    "add".into(),
                    "origin".into(),
                    remote.to_owned(),
                ],
                "remote add",
            )
            .await?;
        } else {
            let dot_git = repo.join(".git");
            fs_err::remove_dir_all(&dot_git).map_err(crate::error::io_err("remove", &dot_git))?;
        }
        let dir = inside(&repo, subdir).map_err(|reason| GitError::Subdir {
            remote: remote.to_owned(),
            subdir: subdir.to_owned(),
            commit: commit.to_owned(),
            reason,
        })?;
        let epoch = self.diff_options.source_date_epoch;
        Ok(tokio::task::block_in_place(|| {
            self.state.commit_layer(&dir, epoch)
        })?)
    }

    async fn git_auth(&self, remote: &str) -> Result<Auth, GitError> {
        let mut config = vec![];
        if (remote.starts_with("https://") || remote.starts_with("http://"))
            && let Some(token) = self
                .session
                .secret("GIT_AUTH_TOKEN")
                .await
                .map_err(GitError::Secret)?
        {
            let token = String::from_utf8_lossy(&token).trim().to_owned();
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            config.push((
                "http.extraHeader".to_owned(),
                format!("Authorization: basic {basic}"),
            ));
        }
        let mut env = vec![
            ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
            // Neither this host's nor root's git config shapes what a build checks out.
            ("GIT_CONFIG_NOSYSTEM".to_owned(), "1".to_owned()),
            ("GIT_CONFIG_GLOBAL".to_owned(), "/dev/null".to_owned()),
            (
                "GIT_SSH_COMMAND".to_owned(),
                // No prompt can be answered in a build; as BuildKit without known hosts.
                "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                    .to_owned(),
            ),
            ("GIT_CONFIG_COUNT".to_owned(), config.len().to_string()),
        ];
        for (i, (key, value)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), key));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), value));
        }
        if let Some(socket) = self.session.ssh_agent("default") {
            env.push((
                "SSH_AUTH_SOCK".to_owned(),
                socket.to_string_lossy().into_owned(),
            ));
        }
        Ok(Auth { env })
    }
}

async fn git(auth: &Auth, dir: Option<&Path>, args: &[&str]) -> Result<Output, GitError> {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command
        .args(args)
        .env_remove("SSH_AUTH_SOCK")
        .envs(auth.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| GitError::Spawn { source })
}

fn checked(out: Output, action: &'static str, remote: &str) -> Result<Output, GitError> {
    if out.status.success() {
        return Ok(out);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(GitError::Command {
        action,
        remote: remote.to_owned(),
        status: out.status,
        stderr: stderr.trim().lines().last().unwrap_or_default().to_owned(),
    })
}

/// A full commit id (sha1 or sha256), which needs no lookup.
fn is_commit(reference: &str) -> bool {
    matches!(reference.len(), 40 | 64) && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit `ls-remote` lists for `reference`: a branch before a tag (an annotated tag by
/// the commit it points to), as git itself prefers; or the ref named in full.
fn pick_ref(listing: &str, reference: &str) -> Option<String> {
    let refs: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .collect();
    let find = |name: &str| {
        refs.iter()
            .find(|(_, r)| *r == name)
            .map(|(c, _)| (*c).to_owned())
    };
    if reference == "HEAD" {
        return find("HEAD");
    }
    find(&format!("refs/heads/{reference}"))
        .or_else(|| find(&format!("refs/tags/{reference}^{{}}")))
        .or_else(|| find(&format!("refs/tags/{reference}")))
        .or_else(|| find(&format!("{reference}^{{}}")))
        .or_else(|| find(reference))
}

/// `subdir` of the checkout, refused when a component is a symlink or not a directory: a
/// repository's symlink must not take the copy out of the checkout.
fn inside(repo: &Path, subdir: &str) -> Result<PathBuf, &'static str> {
    let mut dir = repo.to_path_buf();
    for component in Path::new(subdir).components() {
        match component {
            Component::Normal(name) => dir.push(name),
            Component::CurDir | Component::RootDir => continue,
            Component::ParentDir | Component::Prefix(_) => {
                return Err("it must stay inside the repository");
            }
        }
        let meta = fs_err::symlink_metadata(&dir).map_err(|_| "no such directory in the commit")?;
        if meta.file_type().is_symlink() {
            return Err("it is a symlink, which a checkout does not follow");
        }
        if !meta.is_dir() {
            return Err("it is not a directory");
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_branch_wins_over_a_tag_and_an_annotated_tag_gives_its_commit() {
        let listing = "1111111111111111111111111111111111111111\trefs/tags/v1\n\
                       2222222222222222222222222222222222222222\trefs/tags/v1^{}\n\
                       3333333333333333333333333333333333333333\trefs/heads/main\n\
                       4444444444444444444444444444444444444444\trefs/tags/main\n";
        assert_eq!(
            pick_ref(listing, "v1").as_deref(),
            Some("2222222222222222222222222222222222222222")
        );
        assert_eq!(
            pick_ref(listing, "main").as_deref(),
            Some("3333333333333333333333333333333333333333")
        );
        assert_eq!(pick_ref(listing, "nope"), None);
    }
}
