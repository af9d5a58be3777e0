//! A self-signed certificate made per test run with openssl, for TLS backends behind the
//! LB (which never sees a key: TLS passes through it).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

/// A certificate and its key, with what identifies it.
#[derive(Clone, Debug)]
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The serial number as openssl prints it (`serial=HEX`, upper-case hex).
    pub serial: String,
    /// The SHA-256 fingerprint as openssl prints it (`AA:BB:...`).
    pub fingerprint: String,
}

/// Makes a self-signed certificate for `host` (CN and DNS SAN), valid one day, with a
/// random serial, as `DIR/NAME.crt` and `DIR/NAME.key` (an EC P-256 key).
pub fn self_signed(dir: &Path, name: &str, host: &str) -> Result<Cert> {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let mut serial = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut serial))
        .context("reading /dev/urandom")?;
    // Positive and nonzero: clear the top bit, set a low one.
    serial[0] &= 0x7f;
    serial[7] |= 1;
    let serial_hex: String = serial.iter().map(|b| format!("{b:02X}")).collect();
    cmd::run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        &format!("/CN={host}"),
        "-addext",
        &format!("subjectAltName=DNS:{host}"),
        "-set_serial",
        &format!("0x{serial_hex}"),
        "-keyout",
        &key.to_string_lossy(),
        "-out",
        &cert.to_string_lossy(),
    ]))
    .with_context(|| format!("making a self-signed certificate for {host}"))?;
    let (serial, fingerprint) = identify(&cert)?;
    anyhow::ensure!(
        serial.trim_start_matches('0') == serial_hex.trim_start_matches('0'),
        "openssl made serial {serial}, asked for {serial_hex}"
    );
    Ok(Cert {
        cert,
        key,
        serial,
        fingerprint,
    })
}

/// (serial, SHA-256 fingerprint) of the PEM certificate at `path`.
pub fn identify(path: &Path) -> Result<(String, String)> {
    let out = cmd::run(Command::new("openssl").args([
        "x509",
        "-in",
        &path.to_string_lossy(),
        "-noout",
        "-serial",
        "-fingerprint",
        "-sha256",
    ]))?;
    parse_identity(&out).with_context(|| format!("openssl x509 printed:\n{out}"))
}

/// Parses `serial=...` and `sha256 Fingerprint=...` (any case) out of `openssl x509
/// -noout -serial -fingerprint -sha256` output.
pub fn parse_identity(out: &str) -> Result<(String, String)> {
    let mut serial = None;
    let mut fp = None;
    for line in out.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("serial=") {
            serial = Some(v.to_uppercase());
        } else if let Some((k, v)) = line.split_once('=')
            && k.to_lowercase().contains("fingerprint")
        {
            fp = Some(v.to_uppercase());
        }
    }
    Ok((
        serial.context("no serial=")?,
        fp.context("no fingerprint=")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openssl_identity() {
        let out = "serial=1A2B3C\nsha256 Fingerprint=AB:CD:EF\n";
        assert_eq!(
            parse_identity(out).unwrap(),
            ("1A2B3C".to_owned(), "AB:CD:EF".to_owned())
        );
        assert!(parse_identity("serial=1\n").is_err());
    }
}
