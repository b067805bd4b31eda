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

/// How many leftover processes the log names one by one; the rest are counted. Naming one
/// costs the guest a process of its own (reading a command line), and a script may leave
/// thousands.
const NAMED: usize = 20;

/// How a script ended, and what it left running that still held its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub status: ExitStatus,
    /// What of the script's session was still running once the grace was over; `None` when
    /// the output ended with the script.
    pub leftovers: Option<Leftovers>,
}

/// The processes a script left running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// How many there were.
    pub count: usize,
    /// `pid command line` of the first few (at most [`NAMED`]), or why they cannot be listed.
    pub named: Vec<String>,
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
/// may have no `ps`): the loop itself runs only builtins, so thousands of processes take
/// about a second; only the first [`NAMED`] have their command lines read.
async fn leftovers(session: &Session) -> Leftovers {
    let list = format!(
        r#"sid=$(cat {SESSION}); n=0; for d in /proc/[0-9]*; do read -r st < "$d/stat" 2>/dev/null || continue; set -- ${{st##*) }}; [ "$4" = "$sid" ] || continue; n=$((n+1)); [ "$n" -gt {NAMED} ] || printf '%s %s\n' "${{d#/proc/}}" "$(tr '\0' ' ' < "$d/cmdline")"; done; echo "= $n""#
    );
    match session.output(&list).await {
        Ok(out) => parse_leftovers(&String::from_utf8_lossy(&out)),
        Err(e) => Leftovers {
            count: 0,
            named: vec![format!("(cannot list them: {e})")],
        },
    }
}

/// The listing's lines: `pid command line` each, then `= count`.
fn parse_leftovers(text: &str) -> Leftovers {
    let mut named = vec![];
    let (mut count, mut listed) = (None, 0);
    for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        match line.strip_prefix("= ") {
            Some(n) => count = n.parse().ok(),
            None => {
                // A listing cut short of its `= count` still counts every line it holds.
                listed += 1;
                if named.len() < NAMED {
                    named.push(line.to_owned());
                }
            }
        }
    }
    Leftovers {
        count: count.unwrap_or(listed),
        named,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leftover_listing_counts_all_and_names_a_few() {
        let text = "12 sleep 3600 \n13 sleep 3600\n= 2000\n";
        let got = parse_leftovers(text);
        assert_eq!(got.count, 2000);
        assert_eq!(got.named, vec!["12 sleep 3600", "13 sleep 3600"]);
        let many: String = (0..50).map(|i| format!("{i} x\n")).collect();
        assert_eq!(parse_leftovers(&many).named.len(), NAMED);
        assert_eq!(parse_leftovers(&many).count, 50);
    }
}
