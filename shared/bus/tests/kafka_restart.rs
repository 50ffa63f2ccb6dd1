//! Broker restart in the middle of a stream, against the local stack's tansu.
//! In a test binary of its own: a restart would disturb other Kafka tests
//! running beside it (cargo runs test binaries one after another).

mod suite;

use std::{path::PathBuf, process::Command, sync::Arc};

use chexvision_bus::{Bus, KafkaBus};
use chexvision_config::{Loader, PlatformConfig};

fn stack_bus() -> Option<Arc<dyn Bus>> {
    let config: PlatformConfig = Loader::new().load().expect("configuration from CHEXVISION_*");
    let Some(brokers) = config.bus.strip_prefix("kafka://") else {
        assert!(
            std::env::var("CHEXVISION_REQUIRE_STACK").as_deref() != Ok("1"),
            "CHEXVISION_REQUIRE_STACK=1 but CHEXVISION_BUS is not kafka://"
        );
        eprintln!("skipping: CHEXVISION_BUS is not a kafka:// URI (run `make stack-up`)");
        return None;
    };
    Some(Arc::new(KafkaBus::connect(brokers, &config.kafka).expect("kafka client")))
}

/// Restarts the local stack's broker (its sqlite storage keeps topics, records
/// and committed offsets) while events are being published and consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing() {
    let Some(bus) = stack_bus() else { return };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/stack.sh");
    suite::broker_restart_loses_nothing(bus, move || {
        let status = Command::new("bash")
            .arg(&script)
            .args(["restart", "kafka"])
            .status()
            .expect("run scripts/stack.sh");
        assert!(status.success(), "scripts/stack.sh restart kafka failed");
    })
    .await;
}
