//! What must hold for any input at the two places operators' text enters the daemon, the
//! admin API's change requests and the config file: checked on every input by the
//! cargo-fuzz targets in `fuzz/` (nightly, open-ended) and by the seeded mutation runs of
//! this module's tests (stable, in `cargo xtask test`). A violation panics.

use crate::api::request::{BACKENDS, Command, RELOAD, UNWATCH, WATCH};
use crate::config::{Config, FlagSettings, MAX_WEIGHT};
use std::path::Path;

/// One admin request, `data` = the path, a newline, the body: it is refused with a
/// status and a message, or it is a command that survives the wire unchanged.
pub fn admin_request(data: &[u8]) {
    let (path, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    match Command::from_wire(path, body) {
        None => assert!(
            ![RELOAD, WATCH, UNWATCH].contains(&path) && !path.starts_with(BACKENDS),
            "{path:?} is a command path"
        ),
        Some(Err(e)) => {
            assert!(matches!(e.status, 400 | 404), "status {}", e.status);
            assert!(!e.message.is_empty());
        }
        Some(Ok(cmd)) => {
            let (path, body) = cmd.to_wire();
            let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
            assert_eq!(Command::from_wire(&path, &body), Some(Ok(cmd)));
        }
    }
}

/// One config file: refused with where and why, or a configuration whose every service
/// has a name, distinct backends of at most the top weight, and that the same text
/// builds again identically.
pub fn config_text(text: &str) {
    let flags = FlagSettings::default();
    let name = Path::new("lb.toml");
    match Config::from_text(text, name, &flags) {
        Err(e) => {
            assert!(!e.location.is_empty() && !e.reason.is_empty(), "{e:?}");
            assert!(e.to_string().contains(&e.location), "{e}");
        }
        Ok(c) => {
            assert!(!c.services.is_empty());
            for s in &c.services {
                assert!(!s.name.is_empty());
                assert!(!s.backends.is_empty() || s.dns.is_some(), "{}", s.name);
                for (i, b) in s.backends.iter().enumerate() {
                    assert!(b.weight <= MAX_WEIGHT);
                    assert!(!s.backends[..i].iter().any(|o| o.addr == b.addr));
                }
            }
            assert_eq!(Config::from_text(text, name, &flags).ok(), Some(c));
        }
    }
}

/// xorshift64*: the small deterministic generator of the seeded runs (here, in the
/// PROXY parser's tests and in the XDP program's differential fuzzer). The seed must
/// not be 0.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`0` for `n` = 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    //! Deterministic stand-ins for `cargo fuzz` (xorshift64*, fixed seeds): valid inputs
    //! mutated by byte and by line, each checked.

    use super::Rng;

    /// One to four byte mutations of `buf`: flips, sets, inserts (some from `dict`),
    /// deletions, truncation.
    fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, dict: &[&str]) {
        for _ in 0..=rng.below(4) {
            let len = buf.len();
            let at = rng.below(len + 1);
            match rng.below(6) {
                0 if len > 0 => buf[rng.below(len)] ^= 1 << rng.below(8),
                1 if len > 0 => buf[rng.below(len)] = rng.next_u64() as u8,
                2 if len > 0 => {
                    buf.remove(rng.below(len));
                }
                3 => buf.truncate(at),
                4 => buf.insert(at, rng.next_u64() as u8),
                _ => {
                    let word = dict[rng.below(dict.len())];
                    buf.splice(at..at, word.bytes());
                }
            }
        }
    }

    fn seeds_from(dir: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
        seeds
    }

    #[test]
    fn mutated_admin_requests() {
        let seeds = seeds_from("../fuzz/seeds/admin_request");
        let dict = [
            "\"weight\":",
            "\"now\":true",
            "\"addr\":\"[fd00::1]:80\"",
            "@",
            ":",
            "}",
            "{",
            "null",
            "4294967296",
            "-1",
            "\\u0000",
            "/api/v1/backends/",
            "add",
            "\n",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut accepted = 0;
        for _ in 0..100_000 {
            let mut buf = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &mut buf, &dict);
            super::admin_request(&buf);
            let (path, body) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], &buf[i + 1..]),
                None => (&buf[..], &[][..]),
            };
            let path = String::from_utf8_lossy(path);
            accepted += usize::from(matches!(
                crate::api::request::Command::from_wire(&path, body),
                Some(Ok(_))
            ));
        }
        // The mutations reach accepted commands, not only refusals.
        assert!(accepted > 1000, "{accepted} accepted");
    }

    #[test]
    fn mutated_config_files() {
        let mut seeds = seeds_from("../fuzz/seeds/config_file");
        seeds.push(include_bytes!("../../dist/lb.toml").to_vec());
        let dict = [
            "\n[[service]]\n",
            "\n[service.health]\n",
            "name = \"x\"\n",
            "vip = ",
            "\"[fd00::1]:80\"",
            "\"198.18.0.1:0\"",
            "backends = [",
            "]",
            "@65536",
            "= \"",
            "\"off\"",
            "mode = \"dsr\"\n",
            "encap = \"gue\"\n",
            "backends_dns = \"a:1\"\n",
            "check = \"https:/x\"\n",
            "allow = [\"198.18.0.0/15\", \"fd00::/8\"]\n",
            "deny = \"reset\"\n",
            "deny_established = true\n",
            "\"1h\"",
            "\"0s\"",
            "4294967295",
            "\n",
        ];
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut built = 0;
        for _ in 0..20_000 {
            let mut buf = seeds[rng.below(seeds.len())].clone();
            // Whole lines too: drop one or repeat one.
            let text = String::from_utf8_lossy(&buf).into_owned();
            let mut lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() && rng.below(3) == 0 {
                let i = rng.below(lines.len());
                if rng.below(2) == 0 {
                    lines.remove(i);
                } else {
                    lines.insert(rng.below(lines.len()), lines[i]);
                }
                buf = lines.join("\n").into_bytes();
            }
            mutate(&mut rng, &mut buf, &dict);
            let text = String::from_utf8_lossy(&buf);
            super::config_text(&text);
            built += usize::from(
                crate::config::Config::from_text(
                    &text,
                    std::path::Path::new("lb.toml"),
                    &Default::default(),
                )
                .is_ok(),
            );
        }
        assert!(built > 500, "only {built} mutated files built");
    }
}
