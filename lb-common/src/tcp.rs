//! TCP header flag bits (the header's byte 13) and the option kinds the XDP program
//! reads and writes, as the program and the tests use them.

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

/// Option kinds: end of the list, no-operation, MSS, window scale, SACK permitted, SACK
/// blocks (RFC 9293, 7323, 2018), timestamps (RFC 7323).
pub const OPT_END: u8 = 0;
pub const OPT_NOP: u8 = 1;
pub const OPT_MSS: u8 = 2;
pub const OPT_WSCALE: u8 = 3;
pub const OPT_SACK_OK: u8 = 4;
pub const OPT_SACK: u8 = 5;
pub const OPT_TIMESTAMPS: u8 = 8;
/// Length of the timestamps option: kind, length, TSval, TSecr.
pub const TIMESTAMPS_LEN: u8 = 10;
