//! Tray icons, drawn in code (no image files, no decoder): one shape per [`LinkState`] so the
//! states differ without colour, for colour-blind users and monochrome panels.
//!
//! ```text
//!  no board    hollow square (an empty socket)     grey
//!  connecting  ring with a gap and a centre dot    amber
//!  online      filled disc with a check mark       green
//!  error       filled triangle with "!"            red
//! ```
//!
//! Shapes are defined on the unit square and rasterised with 4×4 supersampling at any size
//! (16–64 px); backends ask for the sizes their platform wants and convert the RGBA pixels.

use super::LinkState;

/// Straight (not premultiplied) RGBA8 pixels, row-major, `size × size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgba {
    /// Width and height in pixels.
    pub size: u32,
    /// `size * size * 4` bytes.
    pub pixels: Vec<u8>,
}

impl Rgba {
    /// The same pixels as ARGB32 in network byte order (StatusNotifierItem's IconPixmap).
    pub fn to_argb_be(&self) -> Vec<u8> {
        self.pixels
            .chunks_exact(4)
            .flat_map(|p| [p[3], p[0], p[1], p[2]])
            .collect()
    }

    /// Alpha channel only (tests compare shapes without colour).
    pub fn alpha(&self) -> Vec<u8> {
        self.pixels.chunks_exact(4).map(|p| p[3]).collect()
    }
}

const GREY: [u8; 3] = [0x70, 0x70, 0x70];
const AMBER: [u8; 3] = [0xd9, 0x8a, 0x00];
const GREEN: [u8; 3] = [0x1e, 0x8e, 0x3e];
const RED: [u8; 3] = [0xc6, 0x28, 0x28];
const WHITE: [u8; 3] = [0xff, 0xff, 0xff];

fn dist_to_segment(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (abx, aby) = (b.0 - a.0, b.1 - a.1);
    let (apx, apy) = (p.0 - a.0, p.1 - a.1);
    let t = ((apx * abx + apy * aby) / (abx * abx + aby * aby)).clamp(0.0, 1.0);
    let (dx, dy) = (apx - t * abx, apy - t * aby);
    (dx * dx + dy * dy).sqrt()
}

/// Colour of the shape at unit-square point (x, y), or None where transparent.
fn sample(state: LinkState, x: f32, y: f32) -> Option<[u8; 3]> {
    let (dx, dy) = (x - 0.5, y - 0.5);
    let r = (dx * dx + dy * dy).sqrt();
    match state {
        LinkState::NoBoard => {
            let d = dx.abs().max(dy.abs());
            ((0.29..=0.44).contains(&d)).then_some(GREY)
        }
        LinkState::Connecting => {
            // Gap in the upper-right quadrant (screen y grows downwards).
            let in_gap = dx > 0.0 && dy < 0.0;
            (((0.27..=0.45).contains(&r) && !in_gap) || r <= 0.12).then_some(AMBER)
        }
        LinkState::Online => {
            if r > 0.47 {
                return None;
            }
            let d = dist_to_segment((x, y), (0.26, 0.52), (0.43, 0.69)).min(dist_to_segment(
                (x, y),
                (0.43, 0.69),
                (0.75, 0.33),
            ));
            Some(if d < 0.075 { WHITE } else { GREEN })
        }
        LinkState::Error => {
            // Triangle (0.5,0.05) (0.97,0.93) (0.03,0.93): inside all three edges.
            let left = (x - 0.5) * (0.93 - 0.05) - (y - 0.05) * (0.03 - 0.5);
            let right = (x - 0.97) * (0.05 - 0.93) - (y - 0.93) * (0.5 - 0.97);
            if !(y <= 0.93 && left >= 0.0 && right >= 0.0) {
                return None;
            }
            let bang = (dx.abs() <= 0.065 && (0.32..=0.66).contains(&y))
                || (dx.abs() <= 0.065 && (0.73..=0.85).contains(&y));
            Some(if bang { WHITE } else { RED })
        }
    }
}

/// Draws the icon for `state` at `size` × `size` pixels.
pub fn draw(state: LinkState, size: u32) -> Rgba {
    const SS: u32 = 4;
    let mut pixels = Vec::with_capacity((size * size * 4) as usize);
    #[allow(clippy::cast_precision_loss, reason = "icon sizes are tiny")]
    let scale = 1.0 / (size * SS) as f32;
    for py in 0..size {
        for px in 0..size {
            let (mut rgb, mut hits) = ([0u32; 3], 0u32);
            for sy in 0..SS {
                for sx in 0..SS {
                    #[allow(clippy::cast_precision_loss, reason = "icon sizes are tiny")]
                    let (x, y) = (
                        ((px * SS + sx) as f32 + 0.5) * scale,
                        ((py * SS + sy) as f32 + 0.5) * scale,
                    );
                    if let Some(c) = sample(state, x, y) {
                        hits += 1;
                        for i in 0..3 {
                            rgb[i] += u32::from(c[i]);
                        }
                    }
                }
            }
            match (rgb.map(|c| c.checked_div(hits)), hits * 255 / (SS * SS)) {
                ([Some(r), Some(g), Some(b)], a) if a > 0 => {
                    pixels.extend_from_slice(&[r as u8, g as u8, b as u8, a as u8]);
                }
                _ => pixels.extend_from_slice(&[0, 0, 0, 0]),
            }
        }
    }
    Rgba { size, pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fraction of pixels whose coverage differs clearly between two icons.
    fn shape_difference(a: &Rgba, b: &Rgba) -> f32 {
        let diff = a
            .alpha()
            .iter()
            .zip(b.alpha())
            .filter(|&(x, y)| x.abs_diff(y) > 128)
            .count();
        #[allow(clippy::cast_precision_loss, reason = "small counts")]
        let f = diff as f32 / (a.size * a.size) as f32;
        f
    }

    /// Luminance-only view: the glyph inside the disc / triangle must show without colour.
    fn luma(p: &[u8]) -> u32 {
        (u32::from(p[0]) * 299 + u32::from(p[1]) * 587 + u32::from(p[2]) * 114) / 1000
    }

    #[test]
    fn shapes_differ_without_colour_at_16_px() {
        let icons: Vec<Rgba> = LinkState::ALL.iter().map(|&s| draw(s, 16)).collect();
        for (i, a) in icons.iter().enumerate() {
            let covered = a.alpha().iter().filter(|&&v| v > 128).count();
            assert!(
                covered > 40,
                "{:?} nearly empty: {covered}",
                LinkState::ALL[i]
            );
            for (j, b) in icons.iter().enumerate().skip(i + 1) {
                let d = shape_difference(a, b);
                assert!(
                    d > 0.12,
                    "{:?} vs {:?}: only {d:.2} of the pixels differ in shape",
                    LinkState::ALL[i],
                    LinkState::ALL[j]
                );
            }
        }
    }

    #[test]
    fn badges_contrast_in_greyscale() {
        for state in [LinkState::Online, LinkState::Error] {
            let icon = draw(state, 32);
            let opaque: Vec<u32> = icon
                .pixels
                .chunks_exact(4)
                .filter(|p| p[3] == 255)
                .map(luma)
                .collect();
            let bright = opaque.iter().filter(|&&l| l > 200).count();
            let dark = opaque.iter().filter(|&&l| l < 140).count();
            assert!(
                bright > 20 && dark > 100,
                "{state:?}: bright {bright} dark {dark}"
            );
        }
    }

    #[test]
    fn argb_conversion_and_sizes() {
        for size in [16, 22, 24, 32, 48] {
            let i = draw(LinkState::Online, size);
            assert_eq!(i.pixels.len(), (size * size * 4) as usize);
            let argb = i.to_argb_be();
            assert_eq!(argb.len(), i.pixels.len());
            let c = ((size / 2 * size + size / 8) * 4) as usize;
            assert_eq!(
                argb[c..c + 4],
                [
                    i.pixels[c + 3],
                    i.pixels[c],
                    i.pixels[c + 1],
                    i.pixels[c + 2]
                ]
            );
        }
    }
}
