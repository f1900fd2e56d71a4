//! Instruction values with a syntax of their own: EXPOSE ports, HEALTHCHECK and durations.

use hoist_parser::Command;

use super::config::HealthConfig;
use super::error::{FrontendError, FrontendErrorKind};

use super::*;

/// `80`, `80/udp`, `8000-8002/tcp` → `80/tcp`, …, one entry per port.
pub(super) fn expose_ports(word: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_owned()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err("expected a protocol of tcp, udp or sctp".into());
    }
    let parse = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| "expected a port number from 0 to 65535".to_owned())
    };
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if end < start {
        return Err("expected a range whose end is not below its start".into());
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// HEALTHCHECK: `NONE`, or `CMD` with its options.
pub(super) fn health(
    h: &hoist_parser::HealthcheckInstruction,
    shell: &[String],
) -> Result<HealthConfig, FrontendError> {
    let flags = check_flags(
        &h.flags,
        "HEALTHCHECK",
        &[
            "interval",
            "timeout",
            "start-period",
            "start-interval",
            "retries",
        ],
        &[],
    )?;
    let kind = h.kind.as_ref().ok_or_else(|| {
        FrontendError::new(
            FrontendErrorKind::Arity {
                instruction: "HEALTHCHECK",
                expected: "NONE or CMD followed by a command",
            },
            h.span,
        )
    })?;
    if kind.value.eq_ignore_ascii_case("none") {
        if h.command.is_some() || !h.flags.is_empty() {
            return Err(FrontendError::new(
                FrontendErrorKind::Arity {
                    instruction: "HEALTHCHECK NONE",
                    expected: "no options and no command",
                },
                h.span,
            ));
        }
        return Ok(HealthConfig {
            test: vec!["NONE".into()],
            ..HealthConfig::default()
        });
    }
    if !kind.value.eq_ignore_ascii_case("cmd") {
        return Err(FrontendError::new(
            FrontendErrorKind::Arity {
                instruction: "HEALTHCHECK",
                expected: "NONE or CMD (found another word)",
            },
            kind.span,
        ));
    }
    let test = match &h.command {
        Some(Command::Exec { args, .. }) if !args.is_empty() => {
            let mut t = vec!["CMD".to_owned()];
            t.extend(args.iter().cloned());
            t
        }
        Some(Command::Shell { text, .. }) => {
            let _ = shell;
            vec!["CMD-SHELL".to_owned(), text.clone()]
        }
        _ => {
            return Err(FrontendError::new(
                FrontendErrorKind::Arity {
                    instruction: "HEALTHCHECK CMD",
                    expected: "a command",
                },
                h.span,
            ));
        }
    };
    let duration = |name: &str| -> Result<u64, FrontendError> {
        match flags.get(name) {
            None => Ok(0),
            Some(flag) => {
                let value = flag.value.clone().unwrap_or_default();
                parse_duration(&value).ok_or_else(|| {
                    flag_value(
                        flag,
                        value,
                        "expected a duration such as 30s, 1m30s or 500ms",
                    )
                })
            }
        }
    };
    let retries = match flags.get("retries") {
        None => 0,
        Some(flag) => {
            let value = flag.value.clone().unwrap_or_default();
            value
                .parse::<u64>()
                .map_err(|_| flag_value(flag, value, "expected a whole number"))?
        }
    };
    Ok(HealthConfig {
        test,
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
    })
}

/// Go's `time.ParseDuration` for the units Dockerfiles use; nanoseconds.
pub(super) fn parse_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    // Durations in a Dockerfile are far below 2^53 ns (104 days), where f64 stays exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(total.round() as u64)
}
