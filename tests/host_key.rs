//! Host key pinning: a guest that presents any key but the one runner generated for this
//! machine is refused, and the refusal is immediate (not a boot timeout).

mod common;

use std::time::{Duration, Instant};

use common::*;
use runner::config::Builder;
use runner::keys::GuestKeys;
use runner::launch::{self, Env};
use runner::machine::accel::AccelChoice;
use runner::paths::Dirs;
use runner::signals::Shutdown;
use runner::{Error, ssh};

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_with_another_host_key_is_refused() {
    let world = World::new();
    let env = Env {
        project: repo(),
        dirs: Dirs::resolve(Some(image_cache()), Some(world.state.path().to_owned())),
        accel: AccelChoice::Auto,
        bake: Default::default(),
        shutdown: Shutdown::never(),
    };
    let builder = Builder::find(&env.project, "bookworm-amd64").unwrap();
    let (backend, _) = launch::backend(&env, &builder).await.unwrap();

    // The guest is given one host key; the client pins another.
    let seeded = GuestKeys::generate().unwrap();
    let pinned = GuestKeys::generate().unwrap();
    let mut machine = backend
        .launch(&launch::spec(&builder, "impostor"), &seeded)
        .await
        .unwrap();
    let started = Instant::now();
    let result = ssh::wait_ready(&mut machine, &pinned).await;
    machine.teardown(false).await.unwrap();

    match result {
        Err(Error::HostKeyMismatch {
            expected,
            presented,
            ..
        }) => {
            assert_ne!(expected, presented);
            assert_eq!(expected, runner::keys::fingerprint(pinned.host_public()));
            assert_eq!(presented, runner::keys::fingerprint(seeded.host_public()));
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
        .launch(&launch::spec(&builder, "genuine"), &seeded)
        .await
        .unwrap();
    let session = ssh::wait_ready(&mut machine, &seeded)
        .await
        .expect("pinned key accepted");
    assert_eq!(session.output("echo ok").await.unwrap(), b"ok\n");
    session.close().await;
    machine.teardown(false).await.unwrap();
    world.assert_clean();
}
