//! The grammar, instruction by instruction: what a Dockerfile author writes, and what the AST
//! says about it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns may unwrap

use hoist_parser::{
    Command, Dockerfile, Instruction, LineIndex, ParseError, ParseErrorKind, dump::dump, parse,
};

fn ok(src: &str) -> Dockerfile {
    parse(src).unwrap_or_else(|e| {
        panic!(
            "{src:?}: {}",
            e.render("Dockerfile", src, &LineIndex::new(src))
        )
    })
}

fn err(src: &str) -> ParseError {
    parse(src).expect_err(src)
}

fn dumped(src: &str) -> String {
    dump(&ok(src), src)
}

fn run_heredocs(src: &str) -> Vec<hoist_parser::Heredoc> {
    match ok(src).instructions.into_iter().last() {
        Some(Instruction::Run(run)) => run.heredocs,
        other => panic!("not a RUN: {other:?}"),
    }
}

mod instructions {
    use super::*;

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(
            dumped("from a\nRuN echo\ncOpY a b\n"),
            "(from \"a\")\n(run \"echo\")\n(copy \"a\" \"b\")\n"
        );
    }

    #[test]
    fn all_eighteen_instructions_parse() {
        let src = "ARG V=1\nFROM a AS b\nADD x /\nCOPY y /\nCMD c\nENTRYPOINT e\nENV k=v\nEXPOSE 80\n\
                   HEALTHCHECK NONE\nLABEL l=1\nMAINTAINER me\nONBUILD RUN x\nRUN r\nSHELL [\"sh\"]\n\
                   STOPSIGNAL 9\nUSER u\nVOLUME /v\nWORKDIR /w\n";
        let names: Vec<_> = ok(src).instructions.iter().map(Instruction::name).collect();
        assert_eq!(names.len(), 18);
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 18, "{names:?}");
    }

    #[test]
    fn unknown_instruction_is_located_and_suggests() {
        let src = "FROM a\nCOPPY a b\n";
        let e = err(src);
        match &e.kind {
            ParseErrorKind::UnknownInstruction {
                found, suggestion, ..
            } => {
                assert_eq!(found, "COPPY");
                assert_eq!(*suggestion, Some("copy"));
            }
            other => panic!("{other:?}"),
        }
        let shown = e.render("Dockerfile", src, &LineIndex::new(src));
        assert!(
            shown.starts_with("Dockerfile:2:1: unknown instruction \"COPPY\""),
            "{shown}"
        );
        assert!(shown.contains("did you mean COPY?"), "{shown}");
        assert!(shown.contains(" 2 | COPPY a b\n   | ^^^^^"), "{shown}");
    }

    #[test]
    fn from_keeps_its_words_and_stage_name() {
        let file = ok("FROM --platform=$BUILDPLATFORM golang:1.22 AS build\n");
        let Instruction::From(from) = &file.instructions[0] else {
            panic!()
        };
        assert_eq!(from.image().unwrap().value, "golang:1.22");
        assert_eq!(from.stage_name().unwrap().value, "build");
        assert_eq!(from.flags[0].name, "platform");
        assert_eq!(from.flags[0].value.as_deref(), Some("$BUILDPLATFORM"));
    }

    #[test]
    fn onbuild_wraps_an_instruction() {
        assert_eq!(
            dumped("ONBUILD RUN [\"a\"]\nonbuild copy . /\n"),
            "(onbuild (run \"a\"))\n(onbuild (copy \".\" \"/\"))\n"
        );
        for bad in [
            "ONBUILD ONBUILD RUN x\n",
            "ONBUILD FROM x\n",
            "ONBUILD MAINTAINER x\n",
        ] {
            assert!(
                matches!(err(bad).kind, ParseErrorKind::OnbuildTrigger { .. }),
                "{bad}"
            );
        }
        assert_eq!(err("ONBUILD\n").kind, ParseErrorKind::OnbuildEmpty);
    }

    #[test]
    fn no_instructions_is_an_error() {
        for src in ["", "\n\n", "# only\n# comments\n", "\u{feff}"] {
            assert_eq!(err(src).kind, ParseErrorKind::NoInstructions, "{src:?}");
        }
    }
}

mod flags {
    use super::*;

    #[test]
    fn flags_with_values_bare_and_repeated() {
        let file = ok("COPY --from=build --link --chmod=755 --exclude=a --exclude=b x /y\n");
        let flags: Vec<_> = file.instructions[0]
            .flags()
            .iter()
            .map(|f| f.to_arg())
            .collect();
        assert_eq!(
            flags,
            [
                "--from=build",
                "--link",
                "--chmod=755",
                "--exclude=a",
                "--exclude=b"
            ]
        );
    }

    #[test]
    fn quotes_and_escapes_in_flags() {
        let file = ok("RUN --mount=\"type=cache,target=/a b\" --x=a\\ b echo\n");
        let flags: Vec<_> = file.instructions[0]
            .flags()
            .iter()
            .map(|f| f.to_arg())
            .collect();
        assert_eq!(flags, ["--mount=type=cache,target=/a b", "--x=a b"]);
    }

    #[test]
    fn double_dash_ends_flags() {
        assert_eq!(
            dumped("COPY --a -- --b /c\n"),
            "(copy [\"--a\"] \"--b\" \"/c\")\n"
        );
    }

    #[test]
    fn flag_spans_point_at_the_flag() {
        let src = "COPY  --from=x a b\n";
        let file = ok(src);
        assert_eq!(file.instructions[0].flags()[0].span.slice(src), "--from=x");
    }
}

mod forms {
    use super::*;

    #[test]
    fn json_and_shell_forms() {
        let file = ok("CMD [\"a\", \"b c\"]\nCMD a \"b c\"\n");
        let Instruction::Cmd(exec) = &file.instructions[0] else {
            panic!()
        };
        assert!(matches!(&exec.command, Some(Command::Exec { args, .. }) if args == &["a", "b c"]));
        let Instruction::Cmd(shell) = &file.instructions[1] else {
            panic!()
        };
        assert!(matches!(&shell.command, Some(Command::Shell { text, .. }) if text == "a \"b c\""));
    }

    #[test]
    fn invalid_json_falls_back_to_shell_form() {
        assert_eq!(
            dumped("RUN ['a']\nRUN [\"a\"\n"),
            "(run \"['a']\")\n(run \"[\\\"a\\\"\")\n"
        );
    }

    #[test]
    fn json_of_non_strings_is_an_error() {
        let src = "FROM a\nCMD [\"a\", 1]\n";
        let e = err(src);
        assert_eq!(e.kind, ParseErrorKind::JsonNotStrings { found: "a number" });
        assert_eq!(LineIndex::new(src).line_col(src, e.span.start), (2, 5));
    }

    #[test]
    fn shell_text_is_kept_exactly() {
        let src = "RUN   echo  \"$HOME\"   |  tr a b  \n";
        let Instruction::Run(run) = &ok(src).instructions[0] else {
            panic!()
        };
        let Some(Command::Shell { text, span }) = &run.command else {
            panic!()
        };
        assert_eq!(text, "echo  \"$HOME\"   |  tr a b");
        assert_eq!(span.slice(src), text);
    }
}

mod continuation {
    use super::*;

    #[test]
    fn backslash_joins_lines_and_comments_inside_are_dropped() {
        let src = "RUN a \\\n# comment\n  b \\\n\n  c\n";
        let file = ok(src);
        assert_eq!(dump(&file, src), "(run \"a   b   c\")\n");
        assert_eq!(file.warnings.len(), 1, "the empty continuation line warns");
        assert_eq!(
            file.instructions[0].span().slice(src),
            "RUN a \\\n# comment\n  b \\\n\n  c"
        );
    }

    #[test]
    fn trailing_backslash_at_end_of_file() {
        assert_eq!(dumped("FROM a\nRUN b \\"), "(from \"a\")\n(run \"b\")\n");
        assert_eq!(dumped("FROM a\nRUN b \\\n"), "(from \"a\")\n(run \"b\")\n");
    }

    #[test]
    fn double_escape_at_end_is_literal() {
        assert_eq!(
            dumped("ENV A b\\\\\nENV C d\n"),
            "(env \"A\" \"b\\\\\\\\\" \"\")\n(env \"C\" \"d\" \"\")\n"
        );
    }

    #[test]
    fn crlf_line_endings() {
        assert_eq!(
            dumped("FROM a\r\nRUN b \\\r\n c\r\n"),
            "(from \"a\")\n(run \"b  c\")\n"
        );
    }

    #[test]
    fn spans_cross_lines() {
        let src = "FROM a\nCOPY x \\\n  y /z\n";
        let Instruction::Copy(copy) = &ok(src).instructions[1] else {
            panic!()
        };
        let idx = LineIndex::new(src);
        let y = &copy.paths.words[1];
        assert_eq!(y.span.slice(src), "y");
        assert_eq!(idx.line_col(src, y.span.start), (3, 3));
    }
}

mod directives {
    use super::*;

    #[test]
    fn escape_directive_changes_continuation_and_escapes() {
        let src = "# escape=`\nFROM a\nRUN dir c:\\ `\n  /w\n";
        let file = ok(src);
        assert_eq!(file.escape, '`');
        assert_eq!(
            dump(&file, src),
            "(from \"a\")\n(run \"dir c:\\\\   /w\")\n"
        );
    }

    #[test]
    fn syntax_and_check_are_recorded() {
        let file = ok("# syntax=docker/dockerfile:1\n# check=skip=all\nFROM a\n");
        assert_eq!(file.syntax(), Some("docker/dockerfile:1"));
        assert_eq!(file.check(), Some("skip=all"));
    }

    #[test]
    fn directives_only_count_at_the_top() {
        let file = ok("FROM a\n# escape=`\nRUN b \\\n c\n");
        assert_eq!(file.escape, '\\');
        assert!(file.directives.is_empty());
        let file = ok("\n# escape=`\nFROM a\n");
        assert_eq!(file.escape, '\\', "a blank line ends the directives");
    }

    #[test]
    fn a_directive_twice_is_an_error_on_its_line() {
        let src = "# syntax=a\n# escape=`\n# syntax=b\nFROM a\n";
        let e = err(src);
        assert_eq!(
            e.kind,
            ParseErrorKind::DuplicateDirective { name: "syntax" }
        );
        assert_eq!(LineIndex::new(src).line(e.span.start), 3);
    }

    #[test]
    fn byte_order_mark_is_accepted() {
        assert_eq!(
            dumped("\u{feff}# escape=`\nFROM a\nRUN x `\n y\n"),
            "(from \"a\")\n(run \"x  y\")\n"
        );
    }
}

mod env_and_label {
    use super::*;

    #[test]
    fn key_value_and_legacy_forms() {
        assert_eq!(
            dumped("ENV a=1 b=\"x y\" c=d\\ e\nENV legacy value with spaces\nLABEL \"k\"='v'\n"),
            "(env \"a\" \"1\" \"=\" \"b\" \"\\\"x y\\\"\" \"=\" \"c\" \"d\\\\ e\" \"=\")\n\
             (env \"legacy\" \"value with spaces\" \"\")\n\
             (label \"\\\"k\\\"\" \"'v'\" \"=\")\n"
        );
    }

    #[test]
    fn malformed_pairs_are_errors() {
        assert!(matches!(
            err("ENV PATH\n").kind,
            ParseErrorKind::MissingValue {
                instruction: "ENV",
                ..
            }
        ));
        assert!(
            matches!(err("LABEL a=b c\n").kind, ParseErrorKind::MissingEquals { ref found } if found == "c")
        );
    }

    #[test]
    fn arg_declarations() {
        let Instruction::Arg(arg) = &ok("ARG a b=2 c=\"x y\"\n").instructions[0] else {
            panic!()
        };
        let decls: Vec<_> = arg
            .args
            .iter()
            .map(|a| (a.name.as_str(), a.default.as_deref()))
            .collect();
        assert_eq!(
            decls,
            [("a", None), ("b", Some("2")), ("c", Some("\"x y\""))]
        );
    }
}

mod heredocs {
    use super::*;

    #[test]
    fn basic_heredoc_body_and_span() {
        let src = "FROM a\nRUN <<EOF\necho hi\necho there\nEOF\nRUN after\n";
        let file = ok(src);
        let Instruction::Run(run) = &file.instructions[1] else {
            panic!()
        };
        let doc = &run.heredocs[0];
        assert_eq!(
            (doc.name.as_str(), doc.fd, doc.expand, doc.chomp),
            ("EOF", 0, true, false)
        );
        assert_eq!(doc.content, "echo hi\necho there\n");
        assert_eq!(
            file.instructions[1].span().slice(src),
            "RUN <<EOF\necho hi\necho there\nEOF"
        );
        assert_eq!(file.instructions.len(), 3);
    }

    #[test]
    fn chomp_strips_leading_tabs() {
        let docs = run_heredocs("RUN <<-EOF\n\techo a\n\t\tb\n\tEOF\n");
        assert!(docs[0].chomp);
        assert_eq!(docs[0].content, "\techo a\n\t\tb\n");
        assert_eq!(
            hoist_parser::heredoc::chomp(&docs[0].content),
            "echo a\nb\n"
        );
    }

    #[test]
    fn quoted_delimiters_turn_off_expansion() {
        for src in [
            "RUN <<'EOF'\n$x\nEOF\n",
            "RUN <<\"EOF\"\n$x\nEOF\n",
            "RUN <<E\"O\"F\n$x\nEOF\n",
        ] {
            let docs = run_heredocs(src);
            assert_eq!(docs[0].name, "EOF", "{src:?}");
            assert!(!docs[0].expand, "{src:?}");
        }
    }

    #[test]
    fn several_heredocs_on_one_line() {
        let src = "COPY <<A <<B /dest/\nfirst\nA\nsecond\nB\n";
        let Instruction::Copy(copy) = &ok(src).instructions[0] else {
            panic!()
        };
        let docs: Vec<_> = copy
            .heredocs
            .iter()
            .map(|d| (d.name.as_str(), d.content.as_str()))
            .collect();
        assert_eq!(docs, [("A", "first\n"), ("B", "second\n")]);
    }

    #[test]
    fn file_descriptor_prefix() {
        let docs = run_heredocs("RUN cat 3<<EOF\nx\nEOF\n");
        assert_eq!(docs[0].fd, 3);
    }

    #[test]
    fn heredoc_under_onbuild() {
        let src = "ONBUILD RUN <<EOF\necho later\nEOF\n";
        let Instruction::Onbuild(on) = &ok(src).instructions[0] else {
            panic!()
        };
        let Instruction::Run(run) = on.trigger.as_ref() else {
            panic!()
        };
        assert_eq!(run.heredocs[0].content, "echo later\n");
    }

    #[test]
    fn heredoc_with_add_and_exec_form_ignored() {
        let src = "ADD <<EOF /x\nbody\nEOF\nRUN [\"echo\", \"<<EOF\"]\n";
        let file = ok(src);
        let Instruction::Add(add) = &file.instructions[0] else {
            panic!()
        };
        assert_eq!(add.heredocs[0].content, "body\n");
        let Instruction::Run(run) = &file.instructions[1] else {
            panic!()
        };
        assert!(run.heredocs.is_empty());
    }

    #[test]
    fn here_strings_are_not_heredocs() {
        assert!(run_heredocs("RUN cat <<<word\n").is_empty());
    }

    #[test]
    fn a_shift_reads_as_a_heredoc_as_in_buildkit() {
        // BuildKit's lexer keeps `<< 2))` together and its pattern allows blanks after `<<`.
        let e = err("RUN echo $((1 << 2))\n");
        assert_eq!(
            e.kind,
            ParseErrorKind::UnterminatedHeredoc { name: "2))".into() }
        );
    }

    #[test]
    fn unterminated_heredoc_is_an_error() {
        let e = err("FROM a\nRUN <<EOF\necho\n");
        assert_eq!(
            e.kind,
            ParseErrorKind::UnterminatedHeredoc { name: "EOF".into() }
        );
    }
}
