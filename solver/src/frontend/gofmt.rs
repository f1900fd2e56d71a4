//! Go's `fmt` renderings that BuildKit writes into image history (`created_by`), so that
//! `docker history` shows the same text for an image hoist built: `%v` and `%q` of a string
//! slice (quoting with the parser's `go_quote`), `time.Duration`'s `String`, and `%+v` of a
//! healthcheck.

use hoist_parser::dump::go_quote;

use super::config::HealthConfig;

/// `%v` of a `[]string`: `[a b c]`.
pub(crate) fn list_v(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// `%q` of a `[]string`: `["a" "b c"]`, each quoted as `strconv.Quote` does.
pub(crate) fn list_q(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// `time.Duration(ns).String()`: `0s`, `1.5s`, `1m30s`, `1h0m0s`, `500ms`, `2µs`, `7ns`.
pub(crate) fn duration(ns: u64) -> String {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    if ns == 0 {
        return "0s".into();
    }
    if ns < US {
        return format!("{ns}ns");
    }
    if ns < MS {
        return format!("{}µs", decimal(ns, 3));
    }
    if ns < S {
        return format!("{}ms", decimal(ns, 6));
    }
    let hours = ns / (3600 * S);
    let minutes = (ns / (60 * S)) % 60;
    let seconds = decimal(ns % (60 * S), 9);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// `v / 10^digits` as a decimal with trailing zeros (and a bare point) removed.
fn decimal(v: u64, digits: u32) -> String {
    let scale = 10u64.pow(digits);
    let whole = v / scale;
    let frac = v % scale;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// `%+v` of Docker's `HealthcheckConfig`, as BuildKit writes it after `HEALTHCHECK `.
pub(crate) fn healthcheck(h: &HealthConfig) -> String {
    format!(
        "{{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        list_v(&h.test),
        duration(h.interval),
        duration(h.timeout),
        duration(h.start_period),
        duration(h.start_interval),
        h.retries
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_prints_them() {
        let s = 1_000_000_000;
        for (ns, text) in [
            (0, "0s"),
            (7, "7ns"),
            (2_000, "2µs"),
            (1_500, "1.5µs"),
            (500_000_000, "500ms"),
            (1_500_000_000, "1.5s"),
            (30 * s, "30s"),
            (90 * s, "1m30s"),
            (3600 * s, "1h0m0s"),
            (3661 * s + s / 2, "1h1m1.5s"),
        ] {
            assert_eq!(duration(ns), text, "{ns} ns");
        }
    }

    #[test]
    fn slices_and_quotes_read_as_go_prints_them() {
        let args = vec!["/bin/sh".to_owned(), "-c".into(), "echo \"hi\"\t\\".into()];
        assert_eq!(list_v(&args), "[/bin/sh -c echo \"hi\"\t\\]");
        assert_eq!(list_q(&args), r#"["/bin/sh" "-c" "echo \"hi\"\t\\"]"#);
        assert_eq!(list_v(&[]), "[]");
    }

    #[test]
    fn a_healthcheck_reads_as_buildkit_writes_it() {
        let h = HealthConfig {
            test: vec!["CMD-SHELL".into(), "curl -f http://localhost/".into()],
            interval: 30_000_000_000,
            timeout: 3_000_000_000,
            start_period: 0,
            start_interval: 0,
            retries: 3,
        };
        assert_eq!(
            healthcheck(&h),
            "{Test:[CMD-SHELL curl -f http://localhost/] Interval:30s Timeout:3s StartPeriod:0s StartInterval:0s Retries:3}"
        );
    }
}
