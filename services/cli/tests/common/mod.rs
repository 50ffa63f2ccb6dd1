//! What the end-to-end tests against the local stack share: the CLI
//! binary, and the stack's settings (skip without it, unless
//! CHEXVISION_REQUIRE_STACK=1, as in `make test` and CI).

use std::process::Command;

use chexvision_config::{Loader, PlatformConfig};

pub fn chexvision() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chexvision"))
}

pub struct Stack {
    pub config: PlatformConfig,
    pub bucket: String,
}

/// The stack from the environment (`eval "$(scripts/stack.sh env)"`), or
/// None to skip; a missing stack fails instead when it is required.
pub fn stack() -> Option<Stack> {
    let config: PlatformConfig = Loader::new().load().expect("configuration");
    let required = std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() == Ok("1");
    let Some(rest) = config.store.strip_prefix("s3://") else {
        assert!(!required, "CHEXVISION_REQUIRE_STACK=1 but no s3:// store");
        eprintln!("skipping: no s3:// store (run `make stack-up`)");
        return None;
    };
    if !config.bus.starts_with("kafka://") {
        assert!(!required, "CHEXVISION_REQUIRE_STACK=1 but no kafka:// bus");
        eprintln!("skipping: no kafka:// bus (run `make stack-up`)");
        return None;
    }
    let bucket = rest.split('/').next().unwrap_or(rest).to_owned();
    Some(Stack { config, bucket })
}
