//! Fixtures shared by lb-user's root integration tests (`xdp_program`, `splice`).

pub mod netns;
