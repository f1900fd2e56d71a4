//! Unit tests of word expansion. The tables are hoist's own words; every row's expectation was
//! also checked once against BuildKit's own lexer (built from its Go source), and all agree. Rows
//! marked "BuildKit quirk" pin behaviour that a shell would not have but `docker build` has.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::*;

/// The environment of the tables: set, empty, spaced and Unicode values.
fn env() -> Vec<(String, String)> {
    [
        ("HOME", "/root"),
        ("NAME", "world"),
        ("EMPTY", ""),
        ("SPACED", "a  b"),
        ("EDGES", "  in the middle  "),
        ("FILE", "archive.tar.gz"),
        ("PATHS", "/usr/local/bin:/usr/bin:/bin"),
        ("CITY", "Zürich"),
        ("STAR", "*"),
        ("MULTI", "one\ntwo"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

const ERROR: &str = "<error>";

/// Runs `(word, expected)` rows through `process_word`; `ERROR` expects an error.
fn check(lexer: &Lexer, rows: &[(&str, &str)]) {
    let env = env();
    let mut failures = Vec::new();
    for &(word, expected) in rows {
        let got = lexer.process_word(word, &env);
        let ok = match &got {
            Ok(value) => value == expected,
            Err(_) => expected == ERROR,
        };
        if !ok {
            failures.push(format!("{word:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// Runs `(word, expected words)` rows through `process_words`.
fn check_words(lexer: &Lexer, env: &dyn Env, rows: &[(&str, &[&str])]) {
    let mut failures = Vec::new();
    for &(word, expected) in rows {
        let got = lexer.process_words(word, env);
        let ok = match &got {
            Ok(words) => words == expected,
            Err(_) => expected == [ERROR],
        };
        if !ok {
            failures.push(format!("{word:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn plain_text_passes_through() {
    check(
        &Lexer::default(),
        &[
            ("", ""),
            ("plain", "plain"),
            ("two words", "two words"),
            ("Grüße/日本語", "Grüße/日本語"),
            ("a<b", "a<b"),
            ("<<EOF", "<<EOF"),
            ("<<  EOF", "<<  EOF"),
        ],
    );
}

#[test]
fn simple_variables() {
    check(
        &Lexer::default(),
        &[
            ("$HOME", "/root"),
            ("${HOME}", "/root"),
            ("dir=$HOME/x", "dir=/root/x"),
            ("${HOME}suffix", "/rootsuffix"),
            ("$HOMEsuffix", ""),
            ("$UNSET", ""),
            ("${UNSET}", ""),
            ("a${EMPTY}b", "ab"),
            ("$CITY!", "Zürich!"),
            // A name runs over letters, digits and underscores, Unicode ones included.
            ("$NAME_2", ""),
            ("$NAMEé", ""),
            // `$` before something that cannot start a name is literal.
            ("$", "$"),
            ("cost: 5$", "cost: 5$"),
            ("$.", "$."),
            ("$/x", "$/x"),
            ("$'x'", "$x"),
            ("$\"x\"", "$x"),
            ("$$", ""),
            // Positional and special parameters are names that are never set.
            ("$1", ""),
            ("x$12y", "xy"),
            ("${10}", ""),
            ("$@x", "x"),
            ("$**", "*"),
            ("${#}", ""),
            ("${?}", ""),
            ("$-", ""),
            ("${!}", ""),
            ("$0", ""),
        ],
    );
}

#[test]
fn default_and_alternative_values() {
    check(
        &Lexer::default(),
        &[
            ("${UNSET:-fallback}", "fallback"),
            ("${EMPTY:-fallback}", "fallback"),
            ("${NAME:-fallback}", "world"),
            ("${UNSET-fallback}", "fallback"),
            ("${EMPTY-fallback}", ""),
            ("${NAME-fallback}", "world"),
            ("${UNSET:+alt}", ""),
            ("${EMPTY:+alt}", ""),
            ("${NAME:+alt}", "alt"),
            ("${UNSET+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${NAME+alt}", "alt"),
            ("${UNSET:-}", ""),
            ("${UNSET:-a b  c}", "a b  c"),
            // Operands expand, nest, and may hold quotes and escapes.
            ("${UNSET:-$HOME}", "/root"),
            ("${UNSET:-${NAME}}", "world"),
            ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
            ("${NAME:+<$NAME>}", "<world>"),
            ("${UNSET:-'}'}", "}"),
            ("${UNSET:-\"$NAME}\"}", "world}"),
            ("${UNSET:-\\}}", "}"),
            ("${UNSET:-\\$NAME}", "$NAME"),
            ("${UNSET:-a{b}", "a{b"),
            ("${UNSET:-x}}", "x}"),
            ("${NAME:+${HOME}:}", "/root:"),
        ],
    );
}

#[test]
fn required_values() {
    check(
        &Lexer::default(),
        &[
            ("${NAME?}", "world"),
            ("${NAME:?}", "world"),
            ("${EMPTY?}", ""),
            ("${EMPTY:?}", ERROR),
            ("${UNSET?}", ERROR),
            ("${UNSET:?}", ERROR),
            ("${UNSET?custom}", ERROR),
        ],
    );
    let env = env();
    let lexer = Lexer::default();
    assert_eq!(
        lexer.process_word("x${UNSET?set it to $NAME}", &env),
        Err(ExpandError::Required {
            name: "UNSET".into(),
            message: "set it to world".into(),
            offset: 1
        })
    );
    let empty = lexer.process_word("${EMPTY:?}", &env).unwrap_err();
    assert_eq!(empty.to_string(), "EMPTY: is not allowed to be empty");
    let unset = lexer.process_word("${UNSET:?}", &env).unwrap_err();
    assert_eq!(unset.to_string(), "UNSET: is not allowed to be unset");
}

#[test]
fn prefix_and_suffix_removal() {
    check(
        &Lexer::default(),
        &[
            ("${FILE#*.}", "tar.gz"),
            ("${FILE##*.}", "gz"),
            ("${FILE%.*}", "archive.tar"),
            ("${FILE%%.*}", "archive"),
            ("${FILE#archive}", ".tar.gz"),
            ("${FILE#nomatch}", "archive.tar.gz"),
            ("${FILE%.gz}", "archive.tar"),
            ("${FILE#}", "archive.tar.gz"),
            ("${FILE%%}", "archive.tar.gz"),
            ("${FILE#*}", "archive.tar.gz"),
            ("${FILE##*}", ""),
            ("${FILE%*}", "archive.tar.gz"),
            ("${FILE%%*}", ""),
            ("${FILE#?}", "rchive.tar.gz"),
            ("${FILE#a?c}", "hive.tar.gz"),
            ("${PATHS#*:}", "/usr/bin:/bin"),
            ("${PATHS##*:}", "/bin"),
            ("${PATHS%:*}", "/usr/local/bin:/usr/bin"),
            ("${PATHS%%:*}", "/usr/local/bin"),
            ("${CITY#Z?}", "rich"),
            ("${UNSET#x}", ""),
            // The pattern expands first.
            ("${FILE#$UNSET}", "archive.tar.gz"),
            ("${FILE%.${UNSET:-gz}}", "archive.tar"),
            // Escaped wildcards are literal; `\}` keeps the brace out of the way.
            ("${STAR#\\*}", ""),
            ("${FILE#\\*}", "archive.tar.gz"),
            ("${FILE#\\x}", ERROR),
            ("${FILE#x\\}", ERROR),
            // Wildcards stop at a newline.
            ("${MULTI##*}", "\ntwo"),
            ("${MULTI%%*}", "one\n"),
            // Pattern operators take no colon.
            ("${FILE:#x}", ERROR),
            ("${FILE:##x}", ERROR),
            ("${FILE:%x}", ERROR),
            ("${FILE:%%x}", ERROR),
        ],
    );
}

#[test]
fn substitution() {
    check(
        &Lexer::default(),
        &[
            ("${PATHS/:/ }", "/usr/local/bin /usr/bin:/bin"),
            ("${PATHS//:/ }", "/usr/local/bin /usr/bin /bin"),
            ("${PATHS//\\//_}", "_usr_local_bin:_usr_bin:_bin"),
            ("${FILE/.*/}", "archive"),
            ("${FILE/a?c/X}", "Xhive.tar.gz"),
            ("${FILE//a/}", "rchive.tr.gz"),
            ("${FILE/nomatch/X}", "archive.tar.gz"),
            ("${FILE/\\*/X}", "archive.tar.gz"),
            ("${STAR/\\*/X}", "X"),
            ("${NAME//?/-}", "-----"),
            ("${NAME///}", "world"),
            ("${NAME/o/$HOME}", "w/rootrld"),
            ("${UNSET/x/y}", ""),
            ("${UNSET//x/y}", ""),
            // An empty pattern matches the empty string.
            ("${NAME//}", ERROR),
            ("${NAME/}", ERROR),
            ("${NAME//x}", ERROR),
            ("${NAME/x/y", ERROR),
            ("${NAME/\\q/y}", ERROR),
        ],
    );
    let env = vec![
        ("V".to_owned(), "ab".to_owned()),
        ("T".to_owned(), "<$0>".to_owned()),
    ];
    let lexer = Lexer::default();
    // With `//`, BuildKit hands the replacement to Go's ReplaceAllString, which reads `$0` as
    // the match; `$0` written in the word itself is an (unset) variable and never gets there.
    assert_eq!(lexer.process_word("${V//?/$T}", &env).unwrap(), "<a><b>");
    assert_eq!(lexer.process_word("${V/?/$T}", &env).unwrap(), "<$0>b");
    assert_eq!(lexer.process_word("${V//?/$0}", &env).unwrap(), "");
    assert_eq!(lexer.process_word("${V///-}", &env).unwrap(), "-a-b-");
    assert_eq!(lexer.process_word("${V//*/-}", &env).unwrap(), "-");
}

#[test]
fn single_quotes_are_literal() {
    check(
        &Lexer::default(),
        &[
            ("'$HOME'", "$HOME"),
            ("'${HOME'", "${HOME"),
            ("'a\\b'", "a\\b"),
            ("'a\\'", "a\\"),
            ("'\"'", "\""),
            ("x'y'z", "xyz"),
            ("''", ""),
            ("'unterminated", ERROR),
            ("it\\'s", "it's"),
            ("'it\\'s'", ERROR),
        ],
    );
}

#[test]
fn double_quotes_expand_and_escape_three_characters() {
    check(
        &Lexer::default(),
        &[
            ("\"$HOME\"", "/root"),
            ("\"${NAME:-x} and '$NAME'\"", "world and 'world'"),
            ("\"\\\"\"", "\""),
            ("\"\\$HOME\"", "$HOME"),
            ("\"\\\\\"", "\\"),
            // Any other escape stays as written.
            ("\"\\n\\t\"", "\\n\\t"),
            ("\"\\'\"", "\\'"),
            ("\"a  b\"", "a  b"),
            ("\"\"", ""),
            ("\"unterminated", ERROR),
            ("\"ends in escape\\", ERROR),
            ("\"escaped quote\\\"", ERROR),
        ],
    );
}

#[test]
fn escapes_outside_quotes() {
    check(
        &Lexer::default(),
        &[
            ("\\$HOME", "$HOME"),
            ("\\\\$HOME", "\\/root"),
            ("\\${HOME}", "${HOME}"),
            ("\\${}", "${}"),
            ("a\\ b", "a b"),
            ("\\n", "n"),
            ("\\\"quoted\\\"", "\"quoted\""),
            ("trailing\\", "trailing"),
            ("trailing\\\\", "trailing\\"),
            ("\\'", "'"),
        ],
    );
}

#[test]
fn backtick_is_the_escape_character_after_the_directive() {
    check(
        &Lexer::new('`'),
        &[
            ("`$HOME", "$HOME"),
            ("C:\\Users\\$NAME", "C:\\Users\\world"),
            ("\"`\"`$x\"", "\"$x"),
            ("\"a\\b\"", "a\\b"),
            ("\"``\"", "`"),
            ("``", "`"),
            ("a` b", "a b"),
            ("end`", "end"),
            // Patterns keep `\` as their escape whatever the Dockerfile's escape character.
            ("${STAR#\\*}", ""),
            ("${FILE#`a}", "archive.tar.gz"),
        ],
    );
}

#[test]
fn malformed_expressions_are_errors() {
    check(
        &Lexer::default(),
        &[
            ("${}", ERROR),
            ("x${}y", ERROR),
            ("${", ERROR),
            ("${HOME", ERROR),
            ("${HOME:-x", ERROR),
            ("${{HOME}", ERROR),
            ("${:}", ERROR),
            ("${:-x}", ERROR),
            ("${.}", ERROR),
            ("${HOME.x}", ERROR),
            ("${HOME:=x}", ERROR),
            ("${HOME=x}", ERROR),
            ("${HOME:x}", ERROR),
            ("${HOME:}", ERROR),
            ("${#HOME}", ERROR),
            ("${UNSET:-${inner}", ERROR),
            ("${UNSET:-'}", ERROR),
        ],
    );
}

#[test]
fn errors_say_where_and_what() {
    let lexer = Lexer::default();
    let err = |word: &str| lexer.process_word(word, &EmptyEnv).unwrap_err();
    assert_eq!(
        err("ab'cd"),
        ExpandError::UnterminatedQuote {
            quote: '\'',
            offset: 2
        }
    );
    assert_eq!(
        err("\"x"),
        ExpandError::UnterminatedQuote {
            quote: '"',
            offset: 0
        }
    );
    assert_eq!(err("ab${cd"), ExpandError::MissingBrace { offset: 2 });
    assert_eq!(err("${a/b"), ExpandError::MissingSlash { offset: 0 });
    assert_eq!(
        err("é${}"),
        ExpandError::BadSubstitution {
            offset: 2,
            found: '}'
        }
    );
    assert_eq!(
        err("${a:=b}"),
        ExpandError::UnsupportedModifier {
            modifier: ":=".into(),
            offset: 3
        }
    );
    assert_eq!(
        err("${a:#b}"),
        ExpandError::UnsupportedModifier {
            modifier: ":#".into(),
            offset: 3
        }
    );
    let invalid = err("${a#x\\y}");
    assert!(
        matches!(&invalid, ExpandError::InvalidPattern { pattern, offset: 0, .. } if pattern == "x\\y")
    );
    assert_eq!(
        err("${a:=b}").to_string(),
        "unsupported modifier ':=' at byte 3: expected '}', one of '-', '+', '?', ':-', ':+', ':?', '#', '##', '%', '%%', '/' or '//'"
    );
    assert_eq!(
        err("x${").to_string(),
        "unterminated expansion at byte 1: expected '}' before the end of the word"
    );
    assert_eq!(err("x${").offset(), 1);
}

#[test]
fn nesting_is_limited_not_a_stack_overflow() {
    let lexer = Lexer::default();
    let nested = |depth: usize| "${a:-".repeat(depth) + "x" + &"}".repeat(depth);
    assert_eq!(
        lexer.process_word(&nested(MAX_NESTING), &EmptyEnv).unwrap(),
        "x"
    );
    assert!(matches!(
        lexer.process_word(&nested(MAX_NESTING + 1), &EmptyEnv),
        Err(ExpandError::TooDeep {
            limit: MAX_NESTING,
            ..
        })
    ));
    assert!(lexer.process_word(&nested(100_000), &EmptyEnv).is_err());
    let quoted_nested = |depth: usize| "\"${a:-".repeat(depth) + "x" + &"}\"".repeat(depth);
    assert_eq!(
        lexer
            .process_word(&quoted_nested(MAX_NESTING), &EmptyEnv)
            .unwrap(),
        "x"
    );
    assert!(
        lexer
            .process_word(&quoted_nested(MAX_NESTING + 1), &EmptyEnv)
            .is_err()
    );
    let quoted = "\"${a:-".repeat(100_000);
    assert!(lexer.process_word(&quoted, &EmptyEnv).is_err());
}

#[test]
fn a_leading_byte_order_mark_is_dropped_as_go_scanners_do() {
    let lexer = Lexer::default();
    assert_eq!(
        lexer.process_word("\u{feff}a\u{feff}", &EmptyEnv).unwrap(),
        "a\u{feff}"
    );
}

#[test]
fn word_splitting() {
    let env: Vec<(String, String)> = [
        ("X", "x"),
        ("TWO", "p q"),
        ("PAD", "  p q  "),
        ("EMPTY", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    check_words(
        &Lexer::default(),
        &env,
        &[
            ("", &[]),
            ("   ", &[]),
            ("one", &["one"]),
            ("  one   two  ", &["one", "two"]),
            ("one\ttwo\nthree", &["one", "two", "three"]),
            ("80/tcp 443/udp", &["80/tcp", "443/udp"]),
            // Unquoted expansions split; quoted ones do not.
            ("$TWO", &["p", "q"]),
            ("a${TWO}b", &["ap", "qb"]),
            ("a${PAD}b", &["a", "p", "q", "b"]),
            ("\"$TWO\"", &["p q"]),
            ("a\"$PAD\"b", &["a  p q  b"]),
            ("'a  b' c", &["a  b", "c"]),
            ("a\\ b c", &["a b", "c"]),
            ("$EMPTY", &[]),
            ("x $EMPTY y", &["x", "y"]),
            // An empty quoted string makes no word.
            ("''", &[]),
            ("\"\" a", &["a"]),
            ("a'' b", &["a", "b"]),
            // A heredoc marker keeps its blanks.
            ("cat << EOF", &["cat", "<< EOF"]),
            ("'unterminated", &[ERROR]),
            ("${X", &[ERROR]),
            // BuildKit quirk (see `Words`): an operator expression drops what came before it
            // in the same word.
            ("ab${X}", &["abx"]),
            ("ab${UNSET:-y}", &["y"]),
            ("ab\"${UNSET:-y}\"c", &["yc"]),
            ("one ab${X#x}c", &["one", "c"]),
        ],
    );
}

#[test]
fn raw_quotes_and_escapes_keep_the_text_as_written() {
    let env = env();
    let raw_quotes = Lexer::default().raw_quotes(true);
    assert_eq!(
        raw_quotes.process_word("'$HOME' \"$NAME\"", &env).unwrap(),
        "'$HOME' \"world\""
    );
    let raw_escapes = Lexer::default().raw_escapes(true);
    assert_eq!(
        raw_escapes.process_word("a\\ b\\$NAME", &env).unwrap(),
        "a\\ b\\$NAME"
    );
    assert_eq!(
        raw_escapes.process_word("\"\\$NAME\"", &env).unwrap(),
        "\\$NAME"
    );
    // BuildKit quirk: an escape before an ordinary character inside double quotes doubles.
    assert_eq!(raw_escapes.process_word("\"\\t\"", &env).unwrap(), "\\\\t");
    // Operands of `-`, `+` and `?` never keep escapes, even in raw mode.
    assert_eq!(
        raw_escapes.process_word("${UNSET:-\\x}", &env).unwrap(),
        "x"
    );
    let both = Lexer::default().raw_quotes(true).raw_escapes(true);
    assert_eq!(both.process_word("<<\"EOF\"", &env).unwrap(), "<<\"EOF\"");
    assert_eq!(both.process_word("<<\\EOF", &env).unwrap(), "<<\\EOF");
    assert_eq!(
        both.process_words("cat <<'EOF' x", &env).unwrap(),
        ["cat", "<<'EOF'", "x"]
    );
    let unquoted = Lexer::default().skip_process_quotes(true);
    assert_eq!(unquoted.process_word("'$NAME'", &env).unwrap(), "'world'");
}

#[test]
fn skip_unset_env_leaves_unset_references_as_written() {
    let lexer = Lexer::default().skip_unset_env(true);
    check(
        &lexer,
        &[
            ("$NAME $UNSET", "world $UNSET"),
            ("${UNSET}", "${UNSET}"),
            ("${UNSET:-x}", "${UNSET:-x}"),
            ("${UNSET-$NAME}", "${UNSET-world}"),
            ("${UNSET#*}", "${UNSET#*}"),
            ("${UNSET%%\\*}", "${UNSET%%\\*}"),
            ("${UNSET?no}", "${UNSET?no}"),
            // BuildKit writes `//` back as `/`.
            ("${UNSET//a/b}", "${UNSET/a/b}"),
            // Unsupported modifiers and bad patterns pass through when the variable is unset…
            ("${UNSET:=x}", "${UNSET:=x}"),
            ("${UNSET/\\q/x}", "${UNSET/\\q/x}"),
            // …but not when it is set, nor when the syntax is broken.
            ("${NAME:=x}", ERROR),
            ("${UNSET", ERROR),
            ("${}", ERROR),
            ("${NAME:-x}", "world"),
            ("${EMPTY:-x}", "x"),
        ],
    );
}

#[test]
fn matches_report_set_and_unset_variables() {
    let env: BTreeMap<String, String> = [("SET", "v"), ("EMPTY", "")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let lexer = Lexer::default();
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|&n| n.to_owned())
            .collect::<BTreeSet<String>>()
    };
    let run = |word: &str| lexer.process_word_with_matches(word, &env).unwrap();

    let plain = run("no variables");
    assert_eq!((plain.matched, plain.unmatched), (set(&[]), set(&[])));
    let mixed = run("$SET ${EMPTY:-d} ${UNSET:+a} ${OTHER-${SET}}");
    assert_eq!(mixed.value, "v d  v");
    assert_eq!(mixed.matched, set(&["EMPTY", "SET"]));
    assert_eq!(mixed.unmatched, set(&["OTHER", "UNSET"]));
    assert_eq!(mixed.words, ["v", "d", "v"]);
    // An operand is read even when its value is not used.
    let unused = run("${SET:-$UNUSED}");
    assert_eq!(
        (unused.matched, unused.unmatched),
        (set(&["SET"]), set(&["UNUSED"]))
    );
    // Quoted and escaped references are not reads.
    let quoted = run("'$A' \\$B \"$SET\"");
    assert_eq!(
        (quoted.matched, quoted.unmatched),
        (set(&["SET"]), set(&[]))
    );
}

#[test]
fn every_env_kind_works() {
    let lexer = Lexer::default();
    let word = "$A-${B:-b}";
    let pairs = vec![
        ("A".to_owned(), "1".to_owned()),
        ("A".to_owned(), "2".to_owned()),
    ];
    assert_eq!(lexer.process_word(word, &pairs).unwrap(), "2-b");
    assert_eq!(lexer.process_word(word, &pairs.as_slice()).unwrap(), "2-b");
    assert_eq!(pairs.keys(), ["A"]);
    let btree: BTreeMap<String, String> = pairs.iter().cloned().collect();
    assert_eq!(lexer.process_word(word, &btree).unwrap(), "2-b");
    let hash: HashMap<String, String> = [
        ("B".to_owned(), String::new()),
        ("A".to_owned(), "3".to_owned()),
    ]
    .into();
    assert_eq!(lexer.process_word(word, &hash).unwrap(), "3-b");
    assert_eq!(Env::keys(&hash), ["A", "B"]);
    assert_eq!(lexer.process_word(word, &EmptyEnv).unwrap(), "-b");
    assert!(EmptyEnv.keys().is_empty());
}

#[test]
fn no_input_panics() {
    // Every short word over the characters that matter, under every option: nothing may
    // panic, whatever the result.
    let alphabet = [
        '$', '{', '}', ':', '-', '#', '%', '/', '*', '?', '\\', '\'', '"', 'a', ' ', '\n',
    ];
    let env: Vec<(String, String)> = vec![("a".to_owned(), "a*\\".to_owned())];
    let lexers = [
        Lexer::default(),
        Lexer::new('`').raw_escapes(true),
        Lexer::default()
            .raw_quotes(true)
            .raw_escapes(true)
            .skip_unset_env(true),
    ];
    let mut word = String::new();
    let n = alphabet.len();
    for code in 0..n * n * n * n {
        word.clear();
        let mut c = code;
        for _ in 0..4 {
            word.push(alphabet[c % n]);
            c /= n;
        }
        let prefixed = format!("${{a{word}");
        for lexer in &lexers {
            let _ = lexer.process_word(&word, &env);
            let _ = lexer.process_words(&word, &env);
            let _ = lexer.process_word(&prefixed, &env);
        }
    }
}

#[test]
fn names_end_where_go_says_letters_and_digits_end() {
    // Go's unicode.IsLetter is category L and IsDigit is Nd; Rust's is_alphabetic and
    // is_numeric are wider, and would read past each of these.
    let env: Vec<(String, String)> = [("a", "A"), ("x", "X"), ("x\u{661}", "Y"), ("\u{905}", "D")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let lexer = Lexer::default();
    let expand = |word: &str| lexer.process_word(word, &env).unwrap();
    // A combining mark (Mn) ends a name, in Latin as in Devanagari.
    assert_eq!(expand("$a\u{301}"), "A\u{301}");
    assert_eq!(expand("$\u{905}\u{93f}"), "D\u{93f}");
    // A superscript two (No) is not a digit; an Arabic-Indic one (Nd) is.
    assert_eq!(expand("$x\u{b2}"), "X\u{b2}");
    assert_eq!(expand("$x\u{661}"), "Y");
    // A Roman numeral (Nl) cannot start a name.
    assert_eq!(expand("$\u{2167}"), "$\u{2167}");
    assert!(unicode::is_letter('ª') && unicode::is_letter('日') && !unicode::is_letter('\u{2167}'));
    assert!(unicode::is_digit('٣') && !unicode::is_digit('½') && !unicode::is_digit('²'));
}

#[test]
fn a_literal_word_is_borrowed_and_anything_that_can_change_is_expanded() {
    let env = env();
    let lexer = Lexer::new('\\');
    let literal = "plain text with spaces, <<EOF and é";
    assert!(matches!(
        lexer.process_word_cow(literal, &env).unwrap(),
        Cow::Borrowed(w) if w == literal
    ));
    for word in [
        "$NAME",
        "a${NAME}b",
        "'quoted $NAME'",
        "\"dq\"",
        "esc\\ aped",
        "\u{feff}bom",
        "$",
        "'",
    ] {
        assert_eq!(
            lexer.process_word_cow(word, &env).map(Cow::into_owned),
            lexer.process_word(word, &env),
            "{word:?}"
        );
    }
    let backtick = Lexer::new('`');
    assert_eq!(
        backtick.process_word_cow("a`$b", &env).unwrap(),
        backtick.process_word("a`$b", &env).unwrap()
    );
    assert!(matches!(
        backtick.process_word_cow("a\\b", &env).unwrap(),
        Cow::Borrowed("a\\b")
    ));
}
