//! Running external commands (ip, ethtool, curl, ...) with errors that say which command
//! failed and what it printed.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// The command line of `cmd`, for error messages.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            s.push_str(&format!("'{arg}'"));
        } else {
            s.push_str(&arg);
        }
    }
    s
}

/// Runs `cmd` to completion and returns its stdout; a non-zero exit is an error carrying
/// the command line, the status and what it printed.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd, None)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`run`], feeding `stdin` to the command.
pub fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Result<String> {
    let out = output(cmd, Some(stdin))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` and returns its raw output whatever the exit status.
pub fn output_any(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", display(cmd)))
}

fn output(cmd: &mut Command, stdin: Option<&str>) -> Result<Output> {
    let line = display(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .with_context(|| format!("writing stdin of `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{}{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            if stdin.is_some() {
                format!("stdin was:\n{}", stdin.unwrap_or_default())
            } else {
                String::new()
            }
        );
    }
    Ok(out)
}

/// `ip ARGS...` (split on whitespace) in the caller's namespace.
pub fn ip(args: &str) -> Result<String> {
    run(Command::new("ip").args(args.split_whitespace()))
}
