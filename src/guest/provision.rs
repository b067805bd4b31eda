//! The provision script: uploaded, then run in the context directory with the target's
//! environment, its output streamed to the target's log as it arrives.

use std::io::Cursor;

use super::{ExitStatus, SRC, Session, quote};
use crate::error::{Error, Result};
use crate::logs::LogSink;

const SCRIPT: &str = "/build/provision";

pub async fn run_script(
    session: &Session,
    script: &[u8],
    env: &[(String, String)],
    log: &LogSink,
) -> Result<ExitStatus> {
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
    let cmd = format!("cd {SRC} && {} {SCRIPT}", assignments.join(" "));
    session
        .exec(&cmd, None::<tokio::io::Empty>, log.clone(), log.clone())
        .await
}
