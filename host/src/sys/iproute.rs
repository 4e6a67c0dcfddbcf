//! `ip` (iproute2): the TUN devices' settings and the routes into them.
//! Routes are few per connection but a PoP has thousands of connections,
//! so they go to one `ip -batch` ([`ip_batch`]).

/// Run `ip` (iproute2) with these arguments; its stderr is the error.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    use anyhow::Context;
    let out = std::process::Command::new("ip").args(args).output().context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        anyhow::bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Run `lines` as one `ip -force -batch -` (in namespace `netns`, if
/// any): a PoP routes thousands of subnets at start, and one `ip` per
/// route took about 1.2 ms each (12 s at 10,000 connections before the
/// admin socket answered). Every line is tried; the failures come back,
/// each as its line's index with `ip`'s error.
pub fn ip_batch(netns: Option<&str>, lines: &[String]) -> anyhow::Result<Vec<(usize, String)>> {
    use anyhow::Context;
    use std::io::Write;
    use std::process::{Command, Stdio};
    if lines.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-force", "-batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot run `ip` (install iproute2)")?;
    let mut stdin = child.stdin.take().context("`ip -batch` without its stdin")?;
    let input = lines.join("\n") + "\n";
    // Written from a thread: `ip` writes its errors while it reads, and a
    // full stderr pipe would stop it while we still wait to write.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().context("`ip -batch`")?;
    let written = writer.join().map_err(|_| anyhow::anyhow!("`ip -batch`: the writer panicked"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failures = batch_failures(&stderr, lines.len());
    // With -force, `ip` goes on past a failed line and exits 1 at the end.
    // Anything else (it stopped reading, died, or exited otherwise) may
    // have left lines after its last report untried: the whole batch is
    // then a failure, not only the lines it named.
    if let Err(e) = written {
        anyhow::bail!("`ip -batch` stopped reading its commands: {e} ({})", stderr.trim());
    }
    match out.status.code() {
        Some(0) => Ok(failures),
        Some(1) if !failures.is_empty() => Ok(failures),
        _ => anyhow::bail!("`ip -batch` failed ({}): {}", out.status, stderr.trim()),
    }
}

/// The failed lines in `ip -batch`'s stderr: each `Command failed -:N`
/// (N counts from 1) follows the lines of its error.
fn batch_failures(stderr: &str, lines: usize) -> Vec<(usize, String)> {
    let mut failures = Vec::new();
    let mut why: Vec<&str> = Vec::new();
    for l in stderr.lines() {
        let n = l.strip_prefix("Command failed -:").and_then(|n| n.trim().parse::<usize>().ok());
        match n {
            Some(n) if (1..=lines).contains(&n) => {
                let text = if why.is_empty() { "failed".to_string() } else { why.join("; ") };
                failures.push((n - 1, text));
                why.clear();
            }
            _ if !l.trim().is_empty() => why.push(l.trim()),
            _ => {}
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::batch_failures;

    #[test]
    fn batch_errors_go_to_their_lines() {
        let stderr =
            "Error: Invalid prefsrc address.\nCommand failed -:2\nCannot find device \"nosuch\"\nCommand failed -:3\n";
        assert_eq!(
            batch_failures(stderr, 4),
            [(1, "Error: Invalid prefsrc address.".to_string()), (2, "Cannot find device \"nosuch\"".to_string())]
        );
        assert!(batch_failures("", 4).is_empty());
        // A line number beyond the commands is not believed; its text goes
        // with the next failure's.
        assert_eq!(
            batch_failures("x\nCommand failed -:9\ny\nCommand failed -:1\n", 2),
            [(0, "x; Command failed -:9; y".to_string())]
        );
    }
}
