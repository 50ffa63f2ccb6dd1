//! `park_idle_candle_workers` changes the process environment, so it has a
//! test binary of its own: no other test runs beside it.

use chexvision_trainer::{park_idle_candle_workers, CANDLE_SPIN_LIMIT_VAR};

#[test]
fn sets_the_spin_limit_only_where_the_environment_does_not() {
    std::env::remove_var(CANDLE_SPIN_LIMIT_VAR);
    park_idle_candle_workers();
    assert_eq!(std::env::var(CANDLE_SPIN_LIMIT_VAR).as_deref(), Ok("0"));

    std::env::set_var(CANDLE_SPIN_LIMIT_VAR, "5000");
    park_idle_candle_workers();
    assert_eq!(std::env::var(CANDLE_SPIN_LIMIT_VAR).as_deref(), Ok("5000"));
}
