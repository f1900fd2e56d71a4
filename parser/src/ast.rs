//! The syntax tree: a [`Dockerfile`] is a list of typed [`Instruction`]s, one struct per keyword.
//!
//! Every node carries a byte [`Span`] into the source text. Values are kept as written: no
//! variable is expanded, and quotes inside words stay (the solver expands them with
//! [`crate::shell`], in exactly the instructions where BuildKit does).

/// A half-open byte range `start..end` into the Dockerfile's source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    #[must_use]
    pub const fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The text this span covers, or `""` if it does not fit `source`.
    #[must_use]
    pub fn slice(self, source: &str) -> &str {
        source.get(self.start..self.end).unwrap_or("")
    }
}

/// A value together with the span it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// The parser directives found at the top of the file, in order.
    pub directives: Vec<Directive>,
    /// The escape character in force (`\` unless an `escape` directive changed it).
    pub escape: char,
    pub instructions: Vec<Instruction>,
    /// Things BuildKit warns about but accepts, such as empty continuation lines.
    pub warnings: Vec<Warning>,
}

impl Dockerfile {
    /// The value of the `syntax` directive, if there is one.
    #[must_use]
    pub fn syntax(&self) -> Option<&str> {
        self.directive(DirectiveKind::Syntax)
    }

    /// The value of the `check` directive, if there is one.
    #[must_use]
    pub fn check(&self) -> Option<&str> {
        self.directive(DirectiveKind::Check)
    }

    fn directive(&self, kind: DirectiveKind) -> Option<&str> {
        self.directives
            .iter()
            .find(|d| d.kind == kind)
            .map(|d| d.value.as_str())
    }
}

/// Which parser directive a [`Directive`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DirectiveKind {
    Syntax,
    Escape,
    Check,
}

impl DirectiveKind {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Syntax => "syntax",
            Self::Escape => "escape",
            Self::Check => "check",
        }
    }
}

/// A parser directive such as `# syntax=docker/dockerfile:1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    pub kind: DirectiveKind,
    pub value: String,
    /// The whole directive line.
    pub span: Span,
}

/// A construct BuildKit accepts with a warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub message: String,
    pub span: Span,
}

/// A builder flag such as `--from=build` or `--link`, as BuildKit reads it: quotes removed, the
/// escape character applied, and no variable expanded. Which flags an instruction accepts, and
/// whether one may repeat, is for the stage that knows the instruction (the solver).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    /// The name without the leading `--`.
    pub name: String,
    /// The value after `=`; `None` for a bare `--flag`.
    pub value: Option<String>,
    pub span: Span,
}

impl Flag {
    /// The flag as BuildKit's dump prints it: `--name` or `--name=value`.
    #[must_use]
    pub fn to_arg(&self) -> String {
        match &self.value {
            Some(value) => format!("--{}={value}", self.name),
            None => format!("--{}", self.name),
        }
    }
}

/// The command of RUN, CMD, ENTRYPOINT, SHELL and HEALTHCHECK CMD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// JSON (exec) form: `["executable", "arg"]`.
    Exec { args: Vec<String>, span: Span },
    /// Shell form: the text after the keyword and flags, with line continuations joined and
    /// comment lines inside them dropped, otherwise exactly as written.
    Shell { text: String, span: Span },
}

impl Command {
    #[must_use]
    pub const fn span(&self) -> Span {
        match self {
            Self::Exec { span, .. } | Self::Shell { span, .. } => *span,
        }
    }

    /// Whether this is the JSON (exec) form.
    #[must_use]
    pub const fn is_exec(&self) -> bool {
        matches!(self, Self::Exec { .. })
    }
}

/// A list of words that may be written as a JSON array or space-separated (ADD, COPY, VOLUME).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordList {
    pub words: Vec<Spanned<String>>,
    /// Whether the list was written as a JSON array.
    pub json: bool,
}

impl WordList {
    /// The words without their spans.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.words.iter().map(|w| w.value.as_str())
    }
}

/// A here-document attached to RUN, COPY or ADD (`<<EOF` … `EOF`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word with its quotes removed.
    pub name: String,
    /// The file descriptor prefix, as in `3<<EOF`; 0 when there is none.
    pub fd: u32,
    /// Whether variables in the body are expanded; false when the delimiter was quoted.
    pub expand: bool,
    /// `<<-EOF`: leading tabs are stripped from the body and the terminator.
    pub chomp: bool,
    /// The body, including its final newline, before any tab stripping. See
    /// [`crate::heredoc::chomp`].
    pub content: String,
    /// The body and the terminator line.
    pub span: Span,
}

/// A `key=value` pair of ENV or LABEL, or a legacy `ENV key value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    /// The value as written: quotes and escapes are kept for the word expansion to remove.
    pub value: String,
    /// The legacy `ENV key value` form, whose value is the rest of the line.
    pub legacy: bool,
    pub span: Span,
}

/// One declaration of an ARG: `name` or `name=default`, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
    pub span: Span,
}

macro_rules! instructions {
    ($( $(#[$doc:meta])* $variant:ident($ty:ident) = $keyword:literal { $($(#[$fdoc:meta])* $field:ident : $fty:ty),* $(,)? } )*) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Debug, PartialEq, Eq)]
            pub struct $ty {
                /// The whole instruction, from its keyword to the end of its last line (heredoc
                /// bodies included).
                pub span: Span,
                /// The keyword as written (any case).
                pub keyword: Span,
                pub flags: Vec<Flag>,
                $( $(#[$fdoc])* pub $field: $fty, )*
            }
        )*

        /// One Dockerfile instruction.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Instruction {
            $( $variant($ty), )*
        }

        impl Instruction {
            /// The span of the whole instruction.
            #[must_use]
            pub const fn span(&self) -> Span {
                match self { $( Self::$variant(i) => i.span, )* }
            }

            /// The span of the keyword.
            #[must_use]
            pub const fn keyword_span(&self) -> Span {
                match self { $( Self::$variant(i) => i.keyword, )* }
            }

            /// The builder flags, in order.
            #[must_use]
            pub fn flags(&self) -> &[Flag] {
                match self { $( Self::$variant(i) => &i.flags, )* }
            }

            /// The keyword in lower case, as BuildKit names instructions.
            #[must_use]
            pub const fn name(&self) -> &'static str {
                match self { $( Self::$variant(_) => $keyword, )* }
            }
        }

        /// Every instruction keyword, in lower case.
        pub const KEYWORDS: &[&str] = &[$($keyword),*];
    };
}

instructions! {
    /// `ADD [flags] src... dest`.
    Add(AddInstruction) = "add" { paths: WordList, heredocs: Vec<Heredoc> }
    /// `ARG name[=default] ...`.
    Arg(ArgInstruction) = "arg" { args: Vec<ArgDecl> }
    /// `CMD command`.
    Cmd(CmdInstruction) = "cmd" {
        /// `None` for a bare `CMD`.
        command: Option<Command>
    }
    /// `COPY [flags] src... dest`.
    Copy(CopyInstruction) = "copy" { paths: WordList, heredocs: Vec<Heredoc> }
    /// `ENTRYPOINT command`.
    Entrypoint(EntrypointInstruction) = "entrypoint" {
        /// `None` for a bare `ENTRYPOINT`.
        command: Option<Command>
    }
    /// `ENV key=value ...` or `ENV key value`.
    Env(EnvInstruction) = "env" { pairs: Vec<KeyValue> }
    /// `EXPOSE port[/proto] ...`.
    Expose(ExposeInstruction) = "expose" { ports: Vec<Spanned<String>> }
    /// `FROM [--platform=p] image [AS name]`.
    From(FromInstruction) = "from" {
        /// Every word after the flags, as written: the image, then `AS name` if present. The
        /// frontend checks the arity, as BuildKit's does.
        args: Vec<Spanned<String>>
    }
    /// `HEALTHCHECK [options] CMD command` or `HEALTHCHECK NONE`.
    Healthcheck(HealthcheckInstruction) = "healthcheck" {
        /// The first word: `CMD` or `NONE` in any case (BuildKit's parser accepts any word here
        /// and leaves the check to the frontend). `None` for a bare `HEALTHCHECK`.
        kind: Option<Spanned<String>>,
        /// The command after the kind word, if any.
        command: Option<Command>
    }
    /// `LABEL key=value ...`.
    Label(LabelInstruction) = "label" { pairs: Vec<KeyValue> }
    /// `MAINTAINER name`.
    Maintainer(MaintainerInstruction) = "maintainer" { name: Option<Spanned<String>> }
    /// `ONBUILD instruction`.
    Onbuild(OnbuildInstruction) = "onbuild" {
        trigger: Box<Instruction>,
        /// The trigger as one line of text (continuations joined), which is what an image
        /// config's `OnBuild` records and a child build parses again.
        expression: String
    }
    /// `RUN [flags] command`.
    Run(RunInstruction) = "run" {
        /// `None` for a bare `RUN`.
        command: Option<Command>,
        heredocs: Vec<Heredoc>
    }
    /// `SHELL ["executable", "param"]`.
    Shell(ShellInstruction) = "shell" { command: Option<Command> }
    /// `STOPSIGNAL signal`.
    Stopsignal(StopsignalInstruction) = "stopsignal" { signal: Option<Spanned<String>> }
    /// `USER user[:group]`.
    User(UserInstruction) = "user" { user: Option<Spanned<String>> }
    /// `VOLUME path ...` or `VOLUME ["path", ...]`.
    Volume(VolumeInstruction) = "volume" { paths: WordList }
    /// `WORKDIR path`.
    Workdir(WorkdirInstruction) = "workdir" { path: Option<Spanned<String>> }
}

impl FromInstruction {
    /// The image (or stage) this stage starts from.
    #[must_use]
    pub fn image(&self) -> Option<&Spanned<String>> {
        self.args.first()
    }

    /// The stage name, from `FROM image AS name`.
    #[must_use]
    pub fn stage_name(&self) -> Option<&Spanned<String>> {
        match self.args.as_slice() {
            [_, as_kw, name] if as_kw.value.eq_ignore_ascii_case("as") => Some(name),
            _ => None,
        }
    }
}

impl AddInstruction {
    /// The sources: every path but the last.
    #[must_use]
    pub fn sources(&self) -> &[Spanned<String>] {
        split_dest(&self.paths.words).0
    }

    /// The destination: the last path.
    #[must_use]
    pub fn dest(&self) -> Option<&Spanned<String>> {
        split_dest(&self.paths.words).1
    }
}

impl CopyInstruction {
    /// The sources: every path but the last.
    #[must_use]
    pub fn sources(&self) -> &[Spanned<String>] {
        split_dest(&self.paths.words).0
    }

    /// The destination: the last path.
    #[must_use]
    pub fn dest(&self) -> Option<&Spanned<String>> {
        split_dest(&self.paths.words).1
    }
}

fn split_dest(words: &[Spanned<String>]) -> (&[Spanned<String>], Option<&Spanned<String>>) {
    match words.split_last() {
        Some((dest, sources)) => (sources, Some(dest)),
        None => (&[], None),
    }
}
