//! Feeds arbitrary text to the config file's parsing and validation: see
//! `lb_user::fuzz::config_text` for what must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        lb_user::fuzz::config_text(text);
    }
});
