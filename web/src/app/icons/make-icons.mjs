// Draws the app's PNG icons (the same picture as icon.svg: four tally marks struck through, on
// the app's colour) without any image library: `node src/app/icons/make-icons.mjs` writes
// icon-192.png, icon-512.png and icon-maskable-512.png here. Run it only to change the icons;
// the PNGs are committed and copied by the build.
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateSync } from 'node:zlib';

const here = dirname(fileURLToPath(import.meta.url));
const BG = [0x7a, 0x1f, 0x3d];
const FG = [0xff, 0xfa, 0xf5];

/** Distance from (px, py) to the segment (ax, ay)-(bx, by). */
function segment(px, py, ax, ay, bx, by) {
  const dx = bx - ax, dy = by - ay;
  const t = Math.max(0, Math.min(1, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)));
  return Math.hypot(px - (ax + t * dx), py - (ay + t * dy));
}

/** The picture in a 512-unit square: 0 outside, 1 background, 2 marks. */
function sample(x, y, { radius, scale }) {
  // Scale the marks about the centre (a maskable icon keeps them in the safe zone).
  const u = 256 + (x - 256) / scale, v = 256 + (y - 256) / scale;
  const r = radius;
  const cx = Math.min(Math.max(x, r), 512 - r), cy = Math.min(Math.max(y, r), 512 - r);
  if (Math.hypot(x - cx, y - cy) > r) return 0;
  const strokes = [[150, 128, 150, 384], [214, 128, 214, 384], [278, 128, 278, 384], [342, 128, 342, 384], [110, 340, 398, 168]];
  return strokes.some(([a, b, c, d]) => segment(u, v, a, b, c, d) <= 18) ? 2 : 1;
}

function png(size, opts) {
  const ss = 4;
  const rows = [];
  for (let y = 0; y < size; y++) {
    const row = Buffer.alloc(1 + size * 4);
    for (let x = 0; x < size; x++) {
      let r = 0, g = 0, b = 0, a = 0;
      for (let i = 0; i < ss; i++) for (let j = 0; j < ss; j++) {
        const s = sample(((x + (i + 0.5) / ss) * 512) / size, ((y + (j + 0.5) / ss) * 512) / size, opts);
        if (s === 0) continue;
        const c = s === 2 ? FG : BG;
        r += c[0]; g += c[1]; b += c[2]; a += 255;
      }
      const n = ss * ss, k = a / 255;
      row[1 + x * 4] = k ? Math.round(r / k) : 0;
      row[2 + x * 4] = k ? Math.round(g / k) : 0;
      row[3 + x * 4] = k ? Math.round(b / k) : 0;
      row[4 + x * 4] = Math.round(a / n);
    }
    rows.push(row);
  }
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, 'ascii');
    data.copy(out, 8);
    out.writeUInt32BE(crc(Buffer.concat([Buffer.from(type, 'ascii'), data])), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr.set([8, 6, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.concat(rows), { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

const TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

writeFileSync(join(here, 'icon-192.png'), png(192, { radius: 96, scale: 1 }));
writeFileSync(join(here, 'icon-512.png'), png(512, { radius: 96, scale: 1 }));
writeFileSync(join(here, 'icon-maskable-512.png'), png(512, { radius: 0, scale: 0.7 }));
console.log('wrote icon-192.png, icon-512.png, icon-maskable-512.png');
