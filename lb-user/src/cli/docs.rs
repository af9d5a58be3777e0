//! Documentation generated from the flags themselves, so it cannot drift from them: man
//! pages (clap_mangen) and shell completions (clap_complete), which the Debian package
//! ships.

use super::Cli;
use clap::CommandFactory;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Man pages are in section 8: lb is run by the administrator.
const SECTION: &str = "8";

/// Writes the completion script of `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "lb", out);
}

/// Writes `lb.8` and `lb-SUBCOMMAND.8` (and `lb-ctl-SUBCOMMAND.8`) into `dir`; returns
/// their paths.
pub fn manpages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let cmd = Cli::command();
    write_page(&cmd, "lb", dir, &mut written)?;
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let page = cmd
        .clone()
        .name(name.to_string())
        .display_name(name.to_string());
    let path = dir.join(format!("{name}.{SECTION}"));
    let mut file = std::fs::File::create(&path)?;
    clap_mangen::Man::new(page)
        .section(SECTION)
        .manual("lb manual")
        .render(&mut file)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_page(sub, &sub_name, dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_command_naming_every_flag() {
        let dir = std::env::temp_dir().join(format!("lb-man-test-{}", std::process::id()));
        let pages = manpages(&dir).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "lb.8",
            "lb-stats.8",
            "lb-ctl.8",
            "lb-ctl-drain.8",
            "lb-decap.8",
            "lb-down.8",
        ] {
            assert!(names.iter().any(|n| n == want), "no {want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("manpages")), "{names:?}");
        let main = std::fs::read_to_string(dir.join("lb.8")).unwrap();
        for flag in ["announce\\-table", "health\\-tls\\-verify", "vip"] {
            assert!(main.contains(flag), "lb.8 does not document {flag}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completions_know_the_subcommands_and_flags() {
        let mut out = Vec::new();
        completions(clap_complete::Shell::Bash, &mut out);
        let text = String::from_utf8(out).unwrap();
        for word in ["stats", "decap", "--announce-table", "--health-tls-ca"] {
            assert!(text.contains(word), "bash completion without {word}");
        }
    }
}
