//! The report's charts as standalone SVG: horizontal bars, and bars grouped by category.

use std::fmt::Write as _;

const COLOURS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart: one labelled bar per value, scaled to the largest.
pub fn hbar_svg(title: &str, bars: &[(String, f64)]) -> String {
    let (left, width, row) = (170.0, 420.0, 26.0);
    let height = 40.0 + row * bars.len() as f64 + 10.0;
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n",
        left + width + 80.0,
        escape(title)
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = 36.0 + row * i as f64;
        let w = width * v / max;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{}\">{v}</text>",
            left - 6.0,
            y + 15.0,
            escape(label),
            row - 6.0,
            COLOURS[0],
            left + w + 4.0,
            y + 15.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Vertical bars grouped by category, one colour per series, with a legend.
pub fn grouped_bars_svg(
    title: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
    max: f64,
) -> String {
    let (left, top, plot_h, group_w) = (40.0, 40.0, 200.0, 110.0);
    let width = left + group_w * categories.len() as f64 + 20.0;
    let height = top + plot_h + 60.0 + 16.0 * series.len() as f64;
    let bar_w = (group_w - 20.0) / series.len().max(1) as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"20\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = top + plot_h * (1.0 - tick);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            width - 20.0,
            left - 4.0,
            y + 4.0,
            tick * max
        );
    }
    for (c, cat) in categories.iter().enumerate() {
        let x0 = left + group_w * c as f64 + 10.0;
        for (k, (_, vals)) in series.iter().enumerate() {
            let v = vals.get(c).copied().unwrap_or(0.0).clamp(0.0, max);
            let h = plot_h * v / max;
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/>",
                x0 + bar_w * k as f64,
                top + plot_h - h,
                bar_w - 2.0,
                COLOURS[k % COLOURS.len()]
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x0 + (group_w - 20.0) / 2.0,
            top + plot_h + 16.0,
            escape(cat)
        );
    }
    for (k, (name, _)) in series.iter().enumerate() {
        let y = top + plot_h + 36.0 + 16.0 * k as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{left}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{:.1}\">{}</text>",
            y - 10.0,
            COLOURS[k % COLOURS.len()],
            left + 18.0,
            y,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}
