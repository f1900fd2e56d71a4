//! The frontend without containers: Dockerfiles in, graphs and configs out, against a resolver
//! that serves made-up images.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::*;
use crate::op::{ExecOp, FileAction};

/// Serves any image with a fixed config, recording what was asked.
#[derive(Default)]
struct FakeResolver {
    configs: BTreeMap<String, ImageConfig>,
    asked: RefCell<Vec<String>>,
}

impl ImageResolver for FakeResolver {
    fn resolve(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<ResolvedImage, crate::scheduler::BoxError> {
        self.asked.borrow_mut().push(reference.to_owned());
        if reference.contains("missing") {
            return Err("manifest unknown".into());
        }
        Ok(ResolvedImage {
            pinned: format!("docker.io/library/{reference}@sha256:{}", "ab".repeat(32)),
            config: self
                .configs
                .get(reference)
                .cloned()
                .unwrap_or_else(|| ImageConfig {
                    env: vec!["PATH=/usr/bin:/bin".into()],
                    cmd: Some(vec!["sh".into()]),
                    ..ImageConfig::default()
                }),
            history: Vec::new(),
            platform: None,
        })
    }
}

fn plan_with(src: &str, opts: &BuildOptions, resolver: &FakeResolver) -> Result<BuildPlan, String> {
    let file = hoist_parser::parse(src).map_err(|e| e.to_string())?;
    lower(&file, src, opts, resolver).map_err(|e| e.render("Dockerfile", src))
}

fn plan(src: &str) -> BuildPlan {
    plan_with(src, &BuildOptions::default(), &FakeResolver::default()).unwrap()
}

fn plan_err(src: &str) -> String {
    plan_with(src, &BuildOptions::default(), &FakeResolver::default()).unwrap_err()
}

fn args(pairs: &[(&str, &str)]) -> BuildOptions {
    BuildOptions {
        build_args: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..BuildOptions::default()
    }
}

/// The exec ops of a plan, inputs first.
fn execs(plan: &BuildPlan) -> Vec<ExecOp> {
    plan.graph
        .reachable(&[plan.root])
        .into_iter()
        .filter_map(|id| match &plan.graph.vertex(id).op {
            Op::Exec(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn digests(plan: &BuildPlan) -> Vec<VertexDigestOf> {
    plan.graph
        .reachable(&[plan.root])
        .into_iter()
        .map(|id| {
            let v = plan.graph.vertex(id);
            (v.name.clone(), v.digest)
        })
        .collect()
}

type VertexDigestOf = (String, crate::graph::VertexDigest);

mod stages {
    use super::*;

    const MULTI: &str = "FROM alpine AS base\nRUN echo base\n\
                         FROM unused-image AS unused\nRUN echo never\n\
                         FROM base AS app\nRUN echo app\n\
                         FROM scratch\nCOPY --from=app /x /x\n";

    #[test]
    fn the_last_stage_is_the_default_target_and_unreached_stages_are_never_resolved() {
        let resolver = FakeResolver::default();
        let plan = plan_with(MULTI, &BuildOptions::default(), &resolver).unwrap();
        assert_eq!(plan.stages, ["base", "app", "stage-3"]);
        assert_eq!(
            *resolver.asked.borrow(),
            ["alpine"],
            "unused-image must not be resolved"
        );
        let cmds: Vec<String> = execs(&plan).iter().map(|e| e.args[2].clone()).collect();
        assert_eq!(cmds, ["echo base", "echo app"]);
    }

    #[test]
    fn target_selects_a_stage() {
        let opts = BuildOptions {
            target: Some("BASE".into()),
            ..BuildOptions::default()
        };
        let plan = plan_with(MULTI, &opts, &FakeResolver::default()).unwrap();
        assert_eq!(plan.stages, ["base"]);
        let opts = BuildOptions {
            target: Some("nope".into()),
            ..BuildOptions::default()
        };
        let err = plan_with(MULTI, &opts, &FakeResolver::default()).unwrap_err();
        assert!(
            err.contains(
                "target stage \"nope\" could not be found: the stages are base, unused, app"
            ),
            "{err}"
        );
    }

    #[test]
    fn stage_index_in_copy_from() {
        let plan = plan("FROM alpine\nRUN echo zero\nFROM scratch\nCOPY --from=0 /a /a\n");
        assert_eq!(execs(&plan).len(), 1);
    }

    #[test]
    fn identical_stages_are_one_vertex() {
        let plan = plan(
            "FROM alpine AS a\nRUN make\nFROM alpine AS b\nRUN make\nFROM scratch\n\
                         COPY --from=a /o /a\nCOPY --from=b /o /b\n",
        );
        assert_eq!(
            execs(&plan).len(),
            1,
            "RUN make in a and b is the same work"
        );
    }

    #[test]
    fn base_image_errors_point_at_the_image() {
        let err = plan_err("FROM alpine\nFROM missing:1\n");
        assert!(
            err.starts_with(
                "Dockerfile:2:6: cannot resolve base image \"missing:1\": manifest unknown"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_from_that_is_neither_a_stage_nor_an_image_says_both() {
        for line in [
            "COPY --from=missing /a /b",
            "RUN --mount=type=cache,target=/c,from=missing true",
            "RUN --mount=from=missing,target=/m true",
        ] {
            let err = plan_err(&format!("FROM alpine\n{line}\n"));
            assert!(
                err.starts_with(
                    "Dockerfile:2:6: --from=missing: no stage of that name comes before this \
                     line, and as an image it cannot be resolved: manifest unknown"
                ) || err.starts_with(
                    "Dockerfile:2:5: --from=missing: no stage of that name comes before this \
                     line, and as an image it cannot be resolved: manifest unknown"
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn from_arity_and_names() {
        assert!(plan_err("FROM a b\n").contains("FROM requires either one or three arguments"));
        assert!(plan_err("FROM a AS 1x\n").contains("invalid stage name"));
        assert!(plan_err("FROM a AS x\nFROM b AS X\n").contains("duplicate stage name"));
        assert!(plan_err("RUN x\nFROM a\n").contains("RUN before the first FROM"));
    }
}

mod args_and_env {
    use super::*;

    #[test]
    fn global_args_reach_from_and_a_bare_arg_imports_them() {
        let src = "ARG TAG=3.19\nFROM alpine:${TAG}\nARG TAG\nRUN echo $TAG\n";
        let resolver = FakeResolver::default();
        let plan = plan_with(src, &BuildOptions::default(), &resolver).unwrap();
        assert_eq!(*resolver.asked.borrow(), ["alpine:3.19"]);
        let run = &execs(&plan)[0];
        assert!(
            run.env.contains(&("TAG".into(), "3.19".into())),
            "{:?}",
            run.env
        );
        // The RUN body itself is never expanded by hoist: the shell does that.
        assert_eq!(run.args, ["/bin/sh", "-c", "echo $TAG"]);
    }

    #[test]
    fn a_stage_built_from_another_inherits_its_args_with_their_values() {
        // As BuildKit does (moby/buildkit#5048): `NAME` declared in `base` reaches `build`.
        let src = "FROM alpine AS base\nARG NAME=joe\nFROM base AS build\nRUN echo hello $NAME\n";
        let built = plan_with(src, &args(&[("NAME", "ann")]), &FakeResolver::default()).unwrap();
        let runs = execs(&built);
        assert!(
            runs[0].env.contains(&("NAME".into(), "ann".into())),
            "{:?}",
            runs[0].env
        );
        // A stage built from an image, not a stage, inherits nothing.
        let src = "FROM alpine AS base\nARG NAME=joe\nFROM alpine\nRUN echo hello $NAME\n";
        let from_image = plan(src);
        assert!(!execs(&from_image)[0].env.iter().any(|(k, _)| k == "NAME"));
    }

    #[test]
    fn global_args_are_not_in_a_stage_without_arg() {
        let plan = plan("ARG V=1\nFROM alpine\nRUN echo\nENV X=${V:-unset}\n");
        assert_eq!(plan.config.env_get("X"), Some("unset"));
        assert!(!execs(&plan)[0].env.iter().any(|(k, _)| k == "V"));
    }

    #[test]
    fn build_arg_overrides_a_default_and_env_beats_arg() {
        let src = "FROM alpine\nARG A=default\nARG B=b\nENV B=from-env\nENV OUT=$A-$B\n";
        let plan = plan_with(src, &args(&[("A", "given")]), &FakeResolver::default()).unwrap();
        assert_eq!(plan.config.env_get("OUT"), Some("given-from-env"));
    }

    #[test]
    fn env_words_expand_against_the_env_before_the_instruction() {
        let plan = plan("FROM alpine\nENV abc=hello\nENV abc=bye def=$abc\n");
        assert_eq!(plan.config.env_get("def"), Some("hello"));
        assert_eq!(plan.config.env_get("abc"), Some("bye"));
    }

    #[test]
    fn a_changed_build_arg_invalidates_only_from_its_first_use() {
        let src = "FROM alpine\nRUN echo one\nARG V\nRUN echo two\nRUN echo three\n";
        let a = plan_with(src, &args(&[("V", "1")]), &FakeResolver::default()).unwrap();
        let b = plan_with(src, &args(&[("V", "2")]), &FakeResolver::default()).unwrap();
        let (da, db) = (digests(&a), digests(&b));
        assert_eq!(da.len(), db.len());
        let first_diff = da.iter().zip(&db).position(|(x, y)| x.1 != y.1).unwrap();
        assert!(
            da[first_diff].0.contains("RUN echo two"),
            "{:?}",
            da[first_diff]
        );
        assert_eq!(da[..first_diff], db[..first_diff]);
    }

    #[test]
    fn proxy_args_reach_run_without_entering_its_digest() {
        let src = "FROM alpine\nRUN wget x\n";
        let a = plan_with(
            src,
            &args(&[("HTTP_PROXY", "http://a")]),
            &FakeResolver::default(),
        )
        .unwrap();
        let b = plan_with(
            src,
            &args(&[("HTTP_PROXY", "http://b")]),
            &FakeResolver::default(),
        )
        .unwrap();
        assert_eq!(digests(&a), digests(&b));
        assert_eq!(
            a.proxy_env,
            [("HTTP_PROXY".to_owned(), "http://a".to_owned())]
        );
        assert!(a.unused_build_args.is_empty());
        assert!(
            !a.history
                .iter()
                .any(|h| h.created_by.contains("HTTP_PROXY"))
        );
    }

    #[test]
    fn platform_args_are_predefined() {
        let src = "FROM --platform=$BUILDPLATFORM alpine\nARG TARGETARCH\nENV A=$TARGETARCH\n";
        let plan = plan(src);
        assert_eq!(
            plan.config.env_get("A"),
            Some(Platform::host().architecture.as_str())
        );
    }

    #[test]
    fn unused_build_args_are_reported() {
        let plan = plan_with(
            "FROM alpine\nARG USED\n",
            &args(&[("USED", "1"), ("NOPE", "2")]),
            &FakeResolver::default(),
        )
        .unwrap();
        assert_eq!(plan.unused_build_args, ["NOPE"]);
    }
}

mod config {
    use super::*;

    #[test]
    fn cmd_entrypoint_and_shell() {
        let plan = plan("FROM alpine\nENTRYPOINT [\"/app\"]\n");
        assert_eq!(
            plan.config.cmd, None,
            "a new ENTRYPOINT resets the inherited CMD"
        );
        let plan = plan_with(
            "FROM alpine\nCMD [\"x\"]\nENTRYPOINT [\"/app\"]\n",
            &BuildOptions::default(),
            &FakeResolver::default(),
        )
        .unwrap();
        assert_eq!(plan.config.cmd, Some(vec!["x".to_owned()]));
        let plan = plan_with(
            "FROM alpine\nSHELL [\"/bin/bash\", \"-eu\", \"-c\"]\nRUN echo hi\nCMD echo $HOME\n",
            &BuildOptions::default(),
            &FakeResolver::default(),
        )
        .unwrap();
        assert_eq!(execs(&plan)[0].args, ["/bin/bash", "-eu", "-c", "echo hi"]);
        assert_eq!(
            plan.config.cmd,
            Some(vec![
                "/bin/bash".into(),
                "-eu".into(),
                "-c".into(),
                "echo $HOME".into()
            ])
        );
    }

    #[test]
    fn workdir_user_labels_ports_volumes_stopsignal() {
        let src = "FROM alpine\nARG P=8080\nWORKDIR /app\nWORKDIR src\nUSER 1000:1000\nLABEL a=1 \"b c\"=\"d e\"\n\
                   EXPOSE $P 53/udp 7000-7001\nVOLUME /data [\"/x\"]\nSTOPSIGNAL SIGTERM\nMAINTAINER me\n";
        let plan = plan(src);
        let c = &plan.config;
        assert_eq!(c.working_dir, "/app/src");
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.labels.get("b c").map(String::as_str), Some("d e"));
        let ports: Vec<&str> = c.exposed_ports.iter().map(String::as_str).collect();
        assert_eq!(ports, ["53/udp", "7000/tcp", "7001/tcp", "8080/tcp"]);
        assert!(c.volumes.contains("/data"));
        assert_eq!(c.stop_signal, "SIGTERM");
        assert_eq!(plan.author.as_deref(), Some("me"));
        // History as BuildKit writes it: expanded values, Go's list format, and a layer for
        // each WORKDIR (BuildKit makes the directory) but the root's.
        let history: Vec<(&str, bool)> = plan
            .history
            .iter()
            .map(|h| (h.created_by.as_str(), h.empty_layer))
            .collect();
        assert_eq!(
            history,
            [
                ("ARG P=8080", true),
                ("WORKDIR /app", false),
                ("WORKDIR /app/src", false),
                ("USER 1000:1000", true),
                ("LABEL a=1 b c=d e", true),
                ("EXPOSE [8080/tcp 53/udp 7000/tcp 7001/tcp]", true),
                ("VOLUME [/data [/x]]", true),
                ("STOPSIGNAL SIGTERM", true),
                ("MAINTAINER me", true),
            ]
        );
    }

    #[test]
    fn history_of_commands_args_and_copies_reads_as_buildkit_writes_it() {
        let src = "FROM scratch\nARG A=1 B\nENV A=env HOME=/root\nWORKDIR /\n\
                   RUN echo $A\nCMD echo hi\nENTRYPOINT [\"/bin/tool\", \"x y\"]\n\
                   SHELL [\"/bin/bash\", \"-c\"]\nHEALTHCHECK --interval=90s --retries=3 CMD true\n\
                   ONBUILD RUN true\nCOPY --from=0 --chown=1:2 --chmod=600 a* b/ dest/\n";
        let plan = plan(src);
        let history: Vec<&str> = plan.history.iter().map(|h| h.created_by.as_str()).collect();
        assert_eq!(
            history,
            [
                "ARG A=1 B",
                "ENV A=env HOME=/root",
                "WORKDIR /",
                "RUN |2 A=env B= /bin/sh -c echo $A # buildkit",
                "CMD [\"/bin/sh\" \"-c\" \"echo hi\"]",
                "ENTRYPOINT [\"/bin/tool\" \"x y\"]",
                "SHELL [/bin/bash -c]",
                "HEALTHCHECK {Test:[CMD-SHELL true] Interval:1m30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}",
                "COPY --chown=1:2 --chmod=600 a* b/ dest/ # buildkit",
            ]
        );
        assert_eq!(
            plan.config.env,
            [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "A=env",
                "HOME=/root"
            ],
            "a stage on scratch gets BuildKit's default PATH"
        );
        assert_eq!(plan.config.working_dir, "/");
    }

    #[test]
    fn healthcheck_options_and_none() {
        let plan = plan(
            "FROM alpine\nHEALTHCHECK --interval=1m30s --retries=3 CMD curl -f http://localhost/\n",
        );
        let h = plan.config.healthcheck.unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "curl -f http://localhost/"]);
        assert_eq!(h.interval, 90_000_000_000);
        assert_eq!(h.retries, 3);
        let plan = plan_with(
            "FROM alpine\nHEALTHCHECK NONE\n",
            &BuildOptions::default(),
            &FakeResolver::default(),
        )
        .unwrap();
        assert_eq!(plan.config.healthcheck.unwrap().test, ["NONE"]);
        assert!(
            plan_err("FROM a\nHEALTHCHECK --interval=soon CMD x\n").contains("expected a duration")
        );
        assert!(plan_err("FROM a\nHEALTHCHECK CONNECT x\n").contains("NONE or CMD"));
    }

    #[test]
    fn onbuild_is_recorded_and_fired_in_a_child() {
        let parent = plan("FROM alpine\nONBUILD RUN echo triggered\n");
        assert_eq!(parent.config.on_build, ["RUN echo triggered"]);
        let mut resolver = FakeResolver::default();
        resolver
            .configs
            .insert("parent".into(), parent.config.clone());
        let child = plan_with(
            "FROM parent\nRUN echo child\n",
            &BuildOptions::default(),
            &resolver,
        )
        .unwrap();
        let cmds: Vec<String> = execs(&child).iter().map(|e| e.args[2].clone()).collect();
        assert_eq!(cmds, ["echo triggered", "echo child"]);
        assert!(
            child.config.on_build.is_empty(),
            "triggers do not pass to grandchildren"
        );
    }

    #[test]
    fn build_labels_apply_to_the_final_image() {
        let opts = BuildOptions {
            labels: [("org.example".to_owned(), "x".to_owned())].into(),
            ..BuildOptions::default()
        };
        let plan = plan_with("FROM alpine\n", &opts, &FakeResolver::default()).unwrap();
        assert_eq!(
            plan.config.labels.get("org.example").map(String::as_str),
            Some("x")
        );
    }
}

mod copy {
    use super::*;

    fn file_actions(plan: &BuildPlan) -> Vec<FileAction> {
        plan.graph
            .reachable(&[plan.root])
            .into_iter()
            .filter_map(|id| match &plan.graph.vertex(id).op {
                Op::File(f) => Some(f.actions.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn context_includes(plan: &BuildPlan) -> Vec<Vec<String>> {
        plan.graph
            .reachable(&[plan.root])
            .into_iter()
            .filter_map(|id| match &plan.graph.vertex(id).op {
                Op::Source(SourceOp::Local { include, .. }) => Some(include.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn copy_selects_only_the_named_context_files() {
        let plan = plan("FROM alpine\nCOPY go.mod go.sum ./\nRUN go mod download\nCOPY . .\n");
        assert_eq!(
            context_includes(&plan),
            [vec!["go.mod".to_owned(), "go.sum".to_owned()], vec![]]
        );
    }

    #[test]
    fn copy_parents_keeps_its_sources_and_flag_in_the_ops() {
        let text = "FROM alpine\nCOPY --parents x/./y/*.txt a /p/\nCOPY --parents=false b /q/\n";
        let plan = plan(text);
        assert_eq!(
            context_includes(&plan),
            [
                vec!["a".to_owned(), "x/./y/*.txt".to_owned()],
                vec!["b".to_owned()]
            ]
        );
        let parents: Vec<bool> = file_actions(&plan)
            .iter()
            .filter_map(|a| match a {
                FileAction::Copy { parents, .. } => Some(*parents),
                _ => None,
            })
            .collect();
        assert_eq!(parents, [true, false]);
        // The flag is in the digest: the same sources without it are other work.
        let without = super::plan(text.replace("--parents ", "").as_str());
        assert_ne!(
            plan.graph.vertex(plan.root).digest,
            without.graph.vertex(without.root).digest
        );
    }

    #[test]
    fn relative_destinations_join_workdir_and_flags_apply() {
        let src = "FROM alpine\nWORKDIR /app\nARG OWNER=app\nCOPY --chown=$OWNER:app --chmod=640 a.txt conf/\n";
        let actions = file_actions(&plan(src));
        let copy = actions.iter().find_map(|a| match a {
            FileAction::Copy {
                dest, chown, chmod, ..
            } => Some((dest.clone(), chown.clone(), *chmod)),
            _ => None,
        });
        assert_eq!(
            copy,
            Some(("/app/conf/".into(), Some("app:app".into()), Some(0o640)))
        );
    }

    #[test]
    fn several_sources_copy_into_a_directory() {
        let actions = file_actions(&plan("FROM alpine\nCOPY a b /dst\n"));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, FileAction::Copy { dest, .. } if dest == "/dst/"))
        );
    }

    #[test]
    fn heredoc_copy_writes_files_and_expands_unless_quoted() {
        let src = "FROM alpine\nARG NAME=world\nCOPY <<EOF <<'RAW' /etc/\nhello $NAME\nEOF\nraw $NAME\nRAW\n";
        let actions = file_actions(&plan(src));
        let files: Vec<(String, String)> = actions
            .iter()
            .filter_map(|a| match a {
                FileAction::Mkfile { path, data, .. } => Some((path.clone(), data.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            files,
            [
                ("/etc/EOF".into(), "hello world\n".into()),
                ("/etc/RAW".into(), "raw $NAME\n".into())
            ]
        );
    }

    #[test]
    fn run_heredoc_runs_its_body() {
        let plan =
            plan("FROM alpine\nRUN <<EOF\necho a\necho b\nEOF\nRUN python3 <<PY\nprint(1)\nPY\n");
        let runs = execs(&plan);
        assert_eq!(runs[0].args[2], "echo a\necho b\n");
        assert_eq!(runs[1].args[2], "python3 <<PY\nprint(1)\nPY");
    }

    #[test]
    fn flag_errors_name_the_flag_and_line() {
        let err = plan_err("FROM alpine\nCOPY --form=x a b\n");
        assert!(
            err.starts_with("Dockerfile:2:6: unknown flag --form for COPY"),
            "{err}"
        );
        let err = plan_err("FROM alpine\nCOPY --from=a --from=b x y\n");
        assert!(err.contains("flag --from given twice for COPY"), "{err}");
        let err = plan_err("FROM alpine\nCOPY --chmod=999 a b\n");
        assert!(err.contains("expected an octal mode"), "{err}");
        let err = plan_err("FROM alpine\nRUN --security=insecure x\n");
        assert!(err.contains("entitlement"), "{err}");
        let err = plan_err("FROM alpine\nCOPY --parents=maybe a/b /x/\n");
        assert!(
            err.starts_with("Dockerfile:2:6: invalid value") && err.contains("true or false"),
            "{err}"
        );
        let err = plan_err("FROM alpine\nRUN --mount=type=cache,target=/c,size=1m true\n");
        assert!(
            err.starts_with("Dockerfile:2:5: invalid value")
                && err.contains("size is not an option of type=cache"),
            "{err}"
        );
        let err = plan_err("FROM alpine\nCOPY onlyone\n");
        assert!(err.contains("at least two arguments"), "{err}");
    }

    #[test]
    fn run_mounts_take_buildkits_defaults() {
        use crate::op::{CacheSharing, Mount};
        let p = plan(
            "FROM alpine AS dep\nFROM alpine\nWORKDIR /w\nARG ID=apt\n\
             RUN --mount=target=ctx,source=src \\\n\
                 --mount=type=bind,from=dep,src=/etc,dst=/e,rw \\\n\
                 --mount=type=cache,target=/var/cache/apt,id=$ID,sharing=locked,uid=100,mode=0700 \\\n\
                 --mount=type=cache,target=c2 \\\n\
                 --mount=type=tmpfs,target=/t,size=64m \\\n\
                 --mount=type=secret,id=token \\\n\
                 --mount=type=secret,id=k,env=KEY \\\n\
                 --mount=type=secret,target=/s/pw,required \\\n\
                 --mount=type=ssh \\\n\
                 --mount=type=ssh,id=gh,target=/ssh.sock,mode=0666 \\\n\
                 true\n",
        );
        let exec = execs(&p).pop().unwrap();
        let m = &exec.mounts;
        assert!(
            matches!(&m[0], Mount::Bind { input: 1, source, target, read_write: false, .. }
            if source == "/src" && target == "/w/ctx")
        );
        assert!(
            matches!(&m[1], Mount::Bind { input: 2, source, target, read_write: true, .. }
            if source == "/etc" && target == "/e")
        );
        assert!(
            matches!(&m[2], Mount::Cache { id, sharing: CacheSharing::Locked, seed: None,
            read_only: false, mode: 0o700, uid: 100, gid: 0, .. } if id == "apt")
        );
        assert!(
            matches!(&m[3], Mount::Cache { id, target, sharing: CacheSharing::Shared,
            mode: 0o755, .. } if id == "/w/c2" && target == "/w/c2")
        );
        assert!(matches!(
            &m[4],
            Mount::Tmpfs {
                size: Some(0x400_0000),
                ..
            }
        ));
        assert!(
            matches!(&m[5], Mount::Secret { id, target: Some(t), env: None, required: false,
            mode: 0o400, .. } if id == "token" && t == "/run/secrets/token")
        );
        assert!(
            matches!(&m[6], Mount::Secret { id, target: None, env: Some(e), .. }
            if id == "k" && e == "KEY")
        );
        assert!(matches!(&m[7], Mount::Secret { id, required: true, .. } if id == "pw"));
        assert!(
            matches!(&m[8], Mount::Ssh { id, target, mode: 0o600, required: false, .. }
            if id == "default" && target == "/run/buildkit/ssh_agent.0")
        );
        assert!(matches!(&m[9], Mount::Ssh { id, target, mode: 0o666, .. }
            if id == "gh" && target == "/ssh.sock"));
        // The secret's id is in the key; a changed cache id changes the step.
        let other = plan("FROM alpine\nRUN --mount=type=cache,target=/c,id=a true\n");
        let again = plan("FROM alpine\nRUN --mount=type=cache,target=/c,id=b true\n");
        assert_ne!(
            other.graph.vertex(other.root).digest,
            again.graph.vertex(again.root).digest
        );
    }

    #[test]
    fn source_date_epoch_is_in_the_key_of_every_layer_making_step() {
        let src = "FROM alpine\nWORKDIR /w\nCOPY a b\nRUN true\n";
        let plain = plan(src);
        let with = |e: &str| {
            plan_with(
                src,
                &args(&[("SOURCE_DATE_EPOCH", e)]),
                &FakeResolver::default(),
            )
            .unwrap()
        };
        let (one, two) = (with("1000"), with("2000"));
        let ops = |p: &BuildPlan| -> Vec<(bool, crate::graph::VertexDigest)> {
            p.graph
                .reachable(&[p.root])
                .into_iter()
                .map(|id| {
                    let v = p.graph.vertex(id);
                    (matches!(v.op, Op::Exec(_) | Op::File(_)), v.digest)
                })
                .collect()
        };
        for (a, b) in [(&plain, &one), (&one, &two)] {
            for ((layer, x), (_, y)) in ops(a).into_iter().zip(ops(b)) {
                assert_eq!(
                    layer,
                    x != y,
                    "a layer-making step keeps its key, or a source changes"
                );
            }
        }
        assert!(execs(&one).iter().all(|e| e.epoch == Some(1000)));
    }

    #[test]
    fn bad_run_mounts_name_the_flag_and_what_is_wrong() {
        for (mount, expect) in [
            ("type=cache", "type=cache mounts need a target=PATH"),
            ("type=volume,target=/x", "unknown mount type \"volume\""),
            ("target=/x,mode=0700", "mode is not an option of type=bind"),
            ("type=cache,target=/x,sharing=all", "unknown sharing"),
            ("type=tmpfs,target=/x,size=huge", "expected a size"),
            ("type=secret", "needs id=ID"),
            (
                "type=secret,id=a,source=b",
                "source and id both name the secret",
            ),
            ("type=cache,target=/x,colour=red", "unknown key \"colour\""),
            ("target=/", "cannot cover /"),
            ("type=cache,target=/x,uid=-1", "expected a number"),
            ("type=bind,target=/x,ro=maybe", "expected true or false"),
            (
                "type=secret,id=a,from=b",
                "from is not an option of type=secret",
            ),
        ] {
            let err = plan_err(&format!("FROM alpine\nRUN --mount={mount} true\n"));
            assert!(
                err.starts_with("Dockerfile:2:5: invalid value") && err.contains(expect),
                "{mount}: {err}"
            );
        }
        let err = plan_err(
            "FROM alpine\nRUN --mount=type=tmpfs,target=/x --mount=type=cache,target=/x true\n",
        );
        assert!(err.contains("same target"), "{err}");
    }

    #[test]
    fn add_of_a_url_or_a_repository_copies_from_a_source_of_its_own() {
        let p = plan(
            "FROM alpine\nADD --chmod=600 https://h.invalid/d/app.tgz /opt/\n\
             ADD --keep-git-dir https://h.invalid/r.git#v1:docs /docs\n",
        );
        let sources: Vec<SourceOp> = p
            .graph
            .reachable(&[p.root])
            .into_iter()
            .filter_map(|id| match &p.graph.vertex(id).op {
                Op::Source(s @ (SourceOp::Http { .. } | SourceOp::Git { .. })) => Some(s.clone()),
                _ => None,
            })
            .collect();
        assert!(sources.contains(&SourceOp::Http {
            url: "https://h.invalid/d/app.tgz".into(),
            checksum: None,
            filename: "app.tgz".into(),
        }));
        assert!(sources.contains(&SourceOp::Git {
            remote: "https://h.invalid/r.git".into(),
            reference: "v1".into(),
            subdir: "docs".into(),
            keep_git_dir: true,
            checksum: None,
        }));
        let copies: Vec<(Vec<String>, String, bool, Option<u32>)> = file_actions(&p)
            .into_iter()
            .filter_map(|a| match a {
                FileAction::Copy {
                    src,
                    dest,
                    unpack_archives,
                    chmod,
                    ..
                } => Some((src, dest, unpack_archives, chmod)),
                _ => None,
            })
            .collect();
        assert_eq!(
            copies,
            [
                (
                    vec!["app.tgz".to_owned()],
                    "/opt/".to_owned(),
                    false,
                    Some(0o600)
                ),
                (vec!["/".to_owned()], "/docs/".to_owned(), false, None),
            ]
        );
    }

    #[test]
    fn a_checksum_is_refused_for_a_local_source() {
        let err = plan_err("FROM alpine\nADD --checksum=sha256:00 app /x\n");
        assert!(
            err.contains("Dockerfile:2:5") && err.contains("--checksum"),
            "{err}"
        );
    }
}

/// A fixed Dockerfile's digests and cache keys, as literal values: a change of how ops are
/// lowered or encoded, or of how keys are made, turns every user's cache cold, so it must show
/// here and come with a new version tag (`hoist.vertex.v1`, `hoist.cachekey.v1`).
#[test]
fn a_fixed_dockerfile_keeps_its_pinned_digests_and_cache_keys() {
    use crate::scheduler::CacheKey;
    let amd64: Platform = "linux/amd64".parse().unwrap();
    let options = BuildOptions {
        target_platform: amd64.clone(),
        build_platform: amd64,
        ..BuildOptions::default()
    };
    let p = plan_with(
        "FROM alpine AS base\nARG V=1\nWORKDIR /src\nCOPY app /src/app\nRUN make V=$V\n\
         FROM scratch\nCOPY --from=base /src/out /out\n",
        &options,
        &FakeResolver::default(),
    )
    .unwrap();
    // Content keys as a worker gives them: a context hash for the source that selects `app`,
    // the manifest digest for the image.
    let mut keys = std::collections::HashMap::new();
    for id in p.graph.reachable(&[p.root]) {
        let v = p.graph.vertex(id);
        let content = match &v.op {
            Op::Source(crate::op::SourceOp::Local { .. }) => Some(format!("{:0>64}", "c0ffee")),
            Op::Source(crate::op::SourceOp::Image { reference, .. }) => {
                reference.split('@').nth(1).map(str::to_owned)
            }
            _ => None,
        };
        let inputs: Vec<CacheKey> = v.inputs.iter().map(|i| keys[i]).collect();
        keys.insert(
            id,
            CacheKey::compute(&v.digest, content.as_deref(), &inputs),
        );
    }
    assert_eq!(
        p.graph.vertex(p.root).digest.hex(),
        "2ddcb1faf89d31964bcb555ebb3492994b7861d036fb07a51de0e76393c57b0c"
    );
    assert_eq!(
        keys[&p.root].hex(),
        "b5e6b1d5076c8ae8b543cc0489293e4bf0682e12a769a1e349ba480cb48c7130"
    );
}
