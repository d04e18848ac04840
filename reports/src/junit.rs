//! junit.xml for CI: one `<testcase>` per checkpoint per reference per model/prompt, plus one per
//! reference that could not run. A missing tensor is a failure, never a skip: a checkpoint the
//! reference could not provide has not been verified. Near-ties pass, with their note in
//! `<system-out>`. Counts match the verdict: the suite fails exactly when the run does.

use crate::results::RunResults;
use crate::summary::{self, keys_summary, status_name, Cell};
use std::fmt::Write;

pub fn render(run: &RunResults) -> String {
    let mut cases = String::new();
    let (mut tests, mut failures, mut errors) = (0usize, 0usize, 0usize);
    for subject in summary::subjects(run) {
        for ((id, reference), cell) in &subject.cells {
            let name = subject.checkpoints.iter().find(|(c, _)| c == id).map_or("", |(_, n)| n.as_str());
            let classname = format!("{}/{}/{}", subject.model, subject.prompt, reference);
            tests += 1;
            failures += usize::from(cell.failed > 0);
            testcase(&mut cases, &classname, &format!("{id:02} {name}"), cell);
        }
    }
    for (reference, error) in &run.reference_errors {
        tests += 1;
        errors += 1;
        let _ = writeln!(
            cases,
            "    <testcase classname=\"{}\" name=\"reference run\">\n      <error message=\"{}\"/>\n    </testcase>",
            escape(reference),
            escape(error)
        );
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(out, "<testsuites tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\">");
    let _ = writeln!(
        out,
        "  <testsuite name=\"parity {}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"0\">",
        escape(&run.run_id)
    );
    let _ = writeln!(
        out,
        "    <properties>\n      <property name=\"engine_version\" value=\"{}\"/>\n      <property name=\"subject\" value=\"{}\"/>\n    </properties>",
        escape(&run.engine_version),
        escape(&run.subject_label())
    );
    out += &cases;
    out += "  </testsuite>\n</testsuites>\n";
    out
}

fn testcase(out: &mut String, classname: &str, name: &str, cell: &Cell) {
    let _ = writeln!(out, "    <testcase classname=\"{}\" name=\"{}\">", escape(classname), escape(name));
    let details: Vec<String> =
        cell.findings.iter().map(|f| format!("{} {} ({}): {}", status_name(f.status), keys_summary(&f.keys), f.keys.len(), f.note)).collect();
    if cell.failed > 0 {
        let message = format!("{}: {} of {} checks failed", status_name(cell.status), cell.failed, cell.checks);
        let _ = writeln!(out, "      <failure message=\"{}\">{}</failure>", escape(&message), escape(&details.join("\n")));
    } else if !details.is_empty() {
        let _ = writeln!(out, "      <system-out>{}</system-out>", escape(&details.join("\n")));
    }
    out.push_str("    </testcase>\n");
}

/// Escapes text for both element content and double-quoted attributes.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters even when escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use quick_xml::events::Event;

    /// Parses the whole document, checking tags balance; returns (testcases, failures, errors, suite attrs).
    fn parse(xml: &str) -> (usize, usize, usize, Vec<(String, String)>) {
        let mut reader = quick_xml::Reader::from_str(xml);
        reader.config_mut().check_end_names = true;
        let (mut cases, mut failures, mut errors, mut suite) = (0, 0, 0, Vec::new());
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Eof => break,
                Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                    b"testcase" => cases += 1,
                    b"failure" => failures += 1,
                    b"error" => errors += 1,
                    b"testsuite" => {
                        for a in e.attributes() {
                            let a = a.expect("attribute");
                            let value = a.unescape_value().expect("escaped value").into_owned();
                            suite.push((String::from_utf8_lossy(a.key.as_ref()).into_owned(), value));
                        }
                    }
                    _ => {}
                },
                Event::Text(t) => {
                    t.unescape().expect("escaped text");
                }
                _ => {}
            }
        }
        (cases, failures, errors, suite)
    }

    #[test]
    fn junit_xml_matches_snapshot() {
        insta::assert_snapshot!(render(&fixture::run()));
    }

    #[test]
    fn output_is_well_formed_and_suite_counts_match_its_testcases() {
        let xml = render(&fixture::run());
        let (cases, failures, errors, suite) = parse(&xml);
        // Fixture: gpt2 has 4 compared checkpoints x 1 ref, llama 5 x 3 = 19, plus 1 reference error.
        assert_eq!((cases, failures, errors), (20, 2, 1));
        let attr = |k: &str| suite.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(attr("tests").as_deref(), Some("20"));
        assert_eq!(attr("failures").as_deref(), Some("2"));
        assert_eq!(attr("errors").as_deref(), Some("1"));
    }

    #[test]
    fn escaping_survives_a_parser_round_trip() {
        let nasty = "a<b & \"c\" 'd'>";
        let xml = format!("<x a=\"{}\">{}</x>", escape(nasty), escape(nasty));
        let mut reader = quick_xml::Reader::from_str(&xml);
        let Event::Start(e) = reader.read_event().expect("start") else { panic!("expected start tag") };
        let value = e.attributes().next().expect("one attribute").expect("valid").unescape_value().expect("unescape").into_owned();
        assert_eq!(value, nasty);
        let Event::Text(t) = reader.read_event().expect("text") else { panic!("expected text") };
        assert_eq!(t.unescape().expect("unescape"), nasty);
    }
}
