//! Feeds arbitrary bytes (a path, a newline, a body) to the admin API's change-request
//! parsing: see `lb_user::fuzz::admin_request` for what must hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lb_user::fuzz::admin_request(data));
