//! The provision script: uploaded, then run in the context directory with the target's
//! environment, its output streamed to the target's log as it arrives.
//!
//! The script runs in a session of its own (`setsid`), so that whatever it leaves behind can
//! be named: when its exit status has arrived but something it started (`dockerd &`, a build
//! daemon) still holds its output, runner waits only a short grace — like nextest's
//! leak-timeout — then writes what is left running into the log and goes on. The exit status
//! decides; the leftovers die with the machine.

use std::io::Cursor;
use std::time::Duration;

use super::{ExitStatus, SRC, Session, quote};
use crate::error::{Error, Result};
use crate::logs::LogSink;

const SCRIPT: &str = "/build/provision";
/// The script's session id, which is also its first process's pid.
const SESSION: &str = "/build/.session";

/// How a script ended, and what it left running that still held its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub status: ExitStatus,
    /// `pid command line` of each process of the script's session still running once the
    /// grace was over; `None` when the output ended with the script.
    pub leftovers: Option<Vec<String>>,
}

pub async fn run_script(
    session: &Session,
    script: &[u8],
    env: &[(String, String)],
    leak: Duration,
    log: &LogSink,
) -> Result<Provisioned> {
    let upload = format!("cat > {SCRIPT} && chmod 755 {SCRIPT}");
    let status = session
        .exec(
            &upload,
            Some(Cursor::new(script.to_vec())),
            log.clone(),
            log.clone(),
        )
        .await?;
    if !status.success() {
        return Err(Error::Guest {
            what: "uploading the provision script".into(),
            status: status.to_string(),
        });
    }
    let assignments: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect();
    let cmd = format!(
        "cd {SRC} && exec env {} setsid -w sh -c 'echo $$ > {SESSION}; exec {SCRIPT}'",
        assignments.join(" ")
    );
    let ended = session
        .exec_with(
            &cmd,
            None::<tokio::io::Empty>,
            log.clone(),
            log.clone(),
            Some(leak),
        )
        .await?;
    let leftovers = match ended.leaked {
        false => None,
        true => Some(leftovers(session).await),
    };
    Ok(Provisioned {
        status: ended.status,
        leftovers,
    })
}

/// The processes of the script's session, read from /proc with the shell alone (the image
/// may have no `ps`).
async fn leftovers(session: &Session) -> Vec<String> {
    let list = format!(
        r#"sid=$(cat {SESSION}); for d in /proc/[0-9]*; do read -r st < "$d/stat" 2>/dev/null || continue; set -- ${{st##*) }}; [ "$4" = "$sid" ] || continue; printf '%s %s\n' "${{d#/proc/}}" "$(tr '\0' ' ' < "$d/cmdline")"; done"#
    );
    match session.output(&list).await {
        Ok(out) => String::from_utf8_lossy(&out)
            .lines()
            .map(|l| l.trim_end().to_owned())
            .filter(|l| !l.is_empty())
            .collect(),
        Err(e) => vec![format!("(cannot list them: {e})")],
    }
}
