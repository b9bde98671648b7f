// Vendoring-time converter (not loaded by the page): world-atlas's land-110m.json (TopoJSON) to
// world.json, a list of rings of [lon, lat] pairs in tenths of a degree, points closer than
// half a degree to the last kept one dropped. The dashboard draws it on a canvas.
// Usage: node convert.js path/to/world-atlas/land-110m.json > world.json
'use strict';
const fs = require('fs');
const topo = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const [sx, sy] = topo.transform.scale;
const [tx, ty] = topo.transform.translate;
// Decode the delta-encoded, quantized arcs into absolute [lon, lat].
const arcs = topo.arcs.map((arc) => {
  let x = 0, y = 0;
  return arc.map(([dx, dy]) => { x += dx; y += dy; return [x * sx + tx, y * sy + ty]; });
});
const arcPoints = (i) => (i >= 0 ? arcs[i] : arcs[~i].slice().reverse());
const rings = [];
const addRing = (indexes) => {
  const ring = [];
  for (const i of indexes) {
    const pts = arcPoints(i);
    for (let k = ring.length ? 1 : 0; k < pts.length; k++) ring.push(pts[k]);
  }
  const kept = [];
  for (const [lon, lat] of ring) {
    const last = kept[kept.length - 1];
    if (!last || Math.abs(last[0] - lon * 10) + Math.abs(last[1] - lat * 10) >= 5) {
      kept.push([Math.round(lon * 10), Math.round(lat * 10)]);
    }
  }
  if (kept.length >= 4) rings.push(kept.flat());
};
for (const geom of Object.values(topo.objects)[0].geometries) {
  if (geom.type === 'Polygon') geom.arcs.forEach(addRing);
  if (geom.type === 'MultiPolygon') geom.arcs.forEach((poly) => poly.forEach(addRing));
}
process.stdout.write(JSON.stringify(rings) + '\n');
