//! Guest text made safe for a terminal. A provision script is untrusted: whatever it prints
//! reaches the user's terminal through the progress line and the summary, and escape sequences
//! there could move the cursor, rewrite earlier lines, retitle the window or hide text.

/// Longest sanitized line kept: wider than any terminal, short enough that a guest printing
/// megabytes without a newline costs nothing.
pub(super) const MAX_LINE_CHARS: usize = 512;

/// Makes untrusted guest text safe to put on a terminal, keeping what a person would have seen.
///
/// Removes ANSI/VT escape sequences (CSI, OSC, DCS and the other string controls, in both
/// 7-bit and 8-bit form), every other control character, and the Unicode bidi overrides that
/// can make text display differently from what it says. Tabs become spaces and trailing space
/// goes; leading space stays, since indentation carries meaning in compiler output. Text before
/// the last carriage return is dropped, because progress meters redraw the line with `\r` and
/// only the last redraw was ever visible.
pub fn sanitize(line: &str) -> String {
    let visible = line
        .rsplit('\r')
        .find(|part| !part.trim().is_empty())
        .unwrap_or("");
    let mut out = String::with_capacity(visible.len().min(MAX_LINE_CHARS));
    let mut kept = 0;
    let mut chars = visible.chars().peekable();
    while kept < MAX_LINE_CHARS
        && let Some(c) = chars.next()
    {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                Some(']' | 'P' | 'X' | '^' | '_') => skip_string(&mut chars),
                // nF escapes (`ESC ( B`): intermediates, then one final byte.
                Some(' '..='/') => {
                    while chars.next_if(|c| matches!(c, ' '..='/')).is_some() {}
                    chars.next();
                }
                _ => {}
            },
            '\u{9b}' => skip_csi(&mut chars),
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            '\t' => {
                out.push(' ');
                kept += 1;
            }
            c if c.is_control() || is_bidi_control(c) => {}
            c => {
                out.push(c);
                kept += 1;
            }
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// Skips a CSI sequence's parameters up to and including its final byte.
fn skip_csi(chars: &mut impl Iterator<Item = char>) {
    for c in chars {
        if ('\x40'..='\x7e').contains(&c) {
            return;
        }
    }
}

/// Skips an OSC/DCS/SOS/PM/APC payload up to its terminator (BEL, `ESC \` or 8-bit ST).
fn skip_string(chars: &mut impl Iterator<Item = char>) {
    let mut after_esc = false;
    for c in chars {
        match c {
            '\x07' | '\u{9c}' => return,
            '\\' if after_esc => return,
            _ => after_esc = c == '\x1b',
        }
    }
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}
