//! Host key pinning: a guest that presents any key but the one runner generated for this
//! machine is refused, and the refusal is immediate (not a boot timeout).

mod common;

use std::time::{Duration, Instant};

use common::*;
use runner::Error;
use runner::config::Builder;
use runner::guest::ExitStatus;
use runner::guest::keys::{GuestKeys, fingerprint};
use runner::machine::{MachineSpec, Machines, Report, Settings};
use runner::paths::Dirs;

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_with_another_host_key_is_refused() {
    let world = World::new();
    let dirs = Dirs::resolve(Some(image_cache()), Some(world.state.path().to_owned()));
    let machines = Machines::new(&dirs, Settings::default());
    let builder = Builder::find(&repo(), "bookworm-amd64").unwrap();
    let backend = machines.backend(&builder);
    backend.prepare(&Report::Lines).await.unwrap();

    // The guest is given one host key; the client pins another.
    let seeded = GuestKeys::generate().unwrap();
    let pinned = GuestKeys::generate().unwrap();
    let mut machine = backend
        .launch(&MachineSpec::of(&builder, "impostor"), &seeded)
        .await
        .unwrap();
    let started = Instant::now();
    let result = machine.connect(&pinned).await;
    machine.teardown(false).await.unwrap();

    match result {
        Err(Error::HostKeyMismatch {
            expected,
            presented,
            ..
        }) => {
            assert_ne!(expected, presented);
            assert_eq!(expected, fingerprint(pinned.host_public()));
            assert_eq!(presented, fingerprint(seeded.host_public()));
        }
        Err(e) => panic!("expected a host key mismatch, got: {e}"),
        Ok(_) => panic!("connected to a guest with the wrong host key"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "refusal should not wait for the boot timeout"
    );

    // With the right pin the same kind of machine is reachable: the refusal above was the key.
    let mut machine = backend
        .launch(&MachineSpec::of(&builder, "genuine"), &seeded)
        .await
        .unwrap();
    let guest = machine.connect(&seeded).await.expect("pinned key accepted");
    let status = guest
        .exec(
            "test \"$(echo ok)\" = ok",
            None,
            Box::new(tokio::io::sink()),
            Box::new(tokio::io::sink()),
        )
        .await
        .unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    guest.close().await;
    machine.teardown(false).await.unwrap();
    world.assert_clean();
}
