// textsam in the browser: text, clicks and a box on one object, with no server (onnxruntime-web, WebAssembly).
//
// The page's API (window.textsam):
//   await textsam.ready                       the graphs are loaded
//   await textsam.loadImage(url | Blob)       embeds the image (and prepares the text candidates)
//   await textsam.segment({text, points: [[x, y, label], ...], box: [x0, y0, x1, y1]})   every field optional
//     -> {width, height, mask: Uint8Array(width * height, 1 inside), score, presence, found}
//   textsam.timings                           {embed_ms, prepare_ms, update_ms} of the last calls
// Coordinates are pixels of the original image (x right, y down, pixel centres at integers).
//
// The steps follow textsam's Python predictor (TextSamPredictor.predict(..., multimask_output=True), best mask):
// PIL's resampling for the model input and the CLIP crops, the CLIP tokenizer, the phrase templates, the
// spatial-word parser, and the model's text path (manifest text.mode): "head", a text head's tokens and its
// locator's click (seeds from k-means of the image embedding, 4-connected regions, deepest points; candidate
// masks, mask NMS), or "engine", the training-free engine (proposals clicked per region of the embedding, IoU
// and stability filters, box NMS, the chosen proposal's box and click); both answer presence from CLIP crops of
// the candidates. The ONNX graphs are described in textsam/export/web.py.
(function () {
  'use strict';

  const MAX_PIXELS = 40e6; // larger images are refused with a message (the page would need gigabytes)
  const api = {timings: {}, manifest: null, version: 1};
  window.textsam = api;

  // ------------------------------------------------------------------ small helpers
  class UserError extends Error {}

  function roundHalfEven(v) { // Python's round()
    const f = Math.floor(v), d = v - f;
    if (d > 0.5) return f + 1;
    if (d < 0.5) return f;
    return f % 2 === 0 ? f : f + 1;
  }
  function argmax(a, start = 0, end = a.length) {
    let best = start;
    for (let i = start + 1; i < end; i++) if (a[i] > a[best]) best = i;
    return best;
  }
  function preprocessShape(h, w, longSide) {
    const scale = longSide / Math.max(h, w);
    return [Math.floor(h * scale + 0.5), Math.floor(w * scale + 0.5)];
  }
  const now = () => performance.now();

  // ------------------------------------------------------------------ PIL's resampling (uint8 RGB, exact)
  const PRECISION_BITS = 32 - 8 - 2;
  const FILTERS = {
    bilinear: {support: 1.0, f: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; }},
    bicubic: {support: 2.0, f: (x) => {
      const a = -0.5; x = Math.abs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    }},
  };
  function coeffs(inSize, outSize, filter) {
    const scale = inSize / outSize, filterscale = Math.max(scale, 1.0);
    const support = filter.support * filterscale, ksize = Math.ceil(support) * 2 + 1;
    const kk = new Int32Array(outSize * ksize), bounds = new Int32Array(outSize * 2);
    const pre = new Float64Array(ksize);
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale, ss = 1.0 / filterscale;
      let xmin = Math.trunc(center - support + 0.5); if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5); if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      let ww = 0.0;
      for (let x = 0; x < xmax; x++) { const w = filter.f((x + xmin - center + 0.5) * ss); pre[x] = w; ww += w; }
      for (let x = 0; x < ksize; x++) {
        const w = x < xmax ? (ww !== 0.0 ? pre[x] / ww : pre[x]) : 0;
        kk[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * (1 << PRECISION_BITS)) : Math.trunc(0.5 + w * (1 << PRECISION_BITS));
      }
      bounds[xx * 2] = xmin; bounds[xx * 2 + 1] = xmax;
    }
    return {kk, bounds, ksize};
  }
  function clip8(v) {
    if (v >= (1 << PRECISION_BITS) * 256) return 255;
    if (v <= 0) return 0;
    return Math.floor(v / (1 << PRECISION_BITS));
  }
  // rgb: Uint8Array h*w*3 -> Uint8Array oh*ow*3 (PIL Image.resize, two passes: horizontal then vertical)
  function resizePIL(rgb, h, w, oh, ow, kind) {
    if (oh === h && ow === w) return rgb.slice();
    const filter = FILTERS[kind];
    const half = 1 << (PRECISION_BITS - 1);
    const H = coeffs(w, ow, filter), V = coeffs(h, oh, filter);
    const needH = ow !== w, needV = oh !== h;
    let src = rgb, sw = w, first = 0;
    if (needH) {
      first = V.bounds[0];
      const last = V.bounds[oh * 2 - 2] + V.bounds[oh * 2 - 1];
      const rows = needV ? last - first : h;
      if (!needV) first = 0;
      const tmp = new Uint8Array(rows * ow * 3);
      for (let y = 0; y < rows; y++) {
        const row = (y + first) * w * 3;
        for (let xx = 0; xx < ow; xx++) {
          const xmin = H.bounds[xx * 2], xmax = H.bounds[xx * 2 + 1], k = xx * H.ksize;
          let s0 = half, s1 = half, s2 = half;
          for (let x = 0; x < xmax; x++) {
            const c = H.kk[k + x], p = row + (x + xmin) * 3;
            s0 += rgb[p] * c; s1 += rgb[p + 1] * c; s2 += rgb[p + 2] * c;
          }
          const o = (y * ow + xx) * 3;
          tmp[o] = clip8(s0); tmp[o + 1] = clip8(s1); tmp[o + 2] = clip8(s2);
        }
      }
      src = tmp; sw = ow;
    }
    if (!needV) return src;
    const out = new Uint8Array(oh * ow * 3);
    for (let yy = 0; yy < oh; yy++) {
      const ymin = V.bounds[yy * 2] - (needH ? first : 0), ymax = V.bounds[yy * 2 + 1], k = yy * V.ksize;
      for (let xx = 0; xx < sw; xx++) {
        let s0 = half, s1 = half, s2 = half;
        for (let y = 0; y < ymax; y++) {
          const c = V.kk[k + y], p = ((y + ymin) * sw + xx) * 3;
          s0 += src[p] * c; s1 += src[p + 1] * c; s2 += src[p + 2] * c;
        }
        const o = (yy * ow + xx) * 3;
        out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2);
      }
    }
    return out;
  }

  // ------------------------------------------------------------------ CLIP's tokenizer (open_clip SimpleTokenizer)
  let tokenizer = null;
  function bytesToUnicode() {
    const bs = [];
    for (let b = 33; b <= 126; b++) bs.push(b);
    for (let b = 161; b <= 172; b++) bs.push(b);
    for (let b = 174; b <= 255; b++) bs.push(b);
    const cs = bs.slice();
    let n = 0;
    for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
    // in bs order (the vocabulary's order); a JS object would iterate integer keys in ascending order instead
    return bs.map((b, i) => [b, String.fromCodePoint(cs[i])]);
  }
  async function loadTokenizer(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`cannot load the tokenizer (${url}: HTTP ${response.status})`);
    const stream = response.body.pipeThrough(new DecompressionStream('gzip'));
    const text = await new Response(stream).text();
    const merges = text.split('\n').slice(1, 49152 - 256 - 2 + 1).map((m) => m.split(' '));
    const pairs = bytesToUnicode();
    const byteEncoder = new Array(256);
    for (const [b, ch] of pairs) byteEncoder[b] = ch;
    const vocab = pairs.map(([, ch]) => ch);
    const base = vocab.slice();
    for (const v of base) vocab.push(v + '</w>');
    for (const m of merges) vocab.push(m.join(''));
    vocab.push('<start_of_text>', '<end_of_text>');
    const encoder = new Map(vocab.map((v, i) => [v, i]));
    const ranks = new Map(merges.map((m, i) => [m[0] + ' ' + m[1], i]));
    tokenizer = {encoder, ranks, byteEncoder, cache: new Map(),
      sot: encoder.get('<start_of_text>'), eot: encoder.get('<end_of_text>'),
      pat: /<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu};
  }
  function bpe(token) {
    const t = tokenizer;
    if (t.cache.has(token)) return t.cache.get(token);
    const chars = Array.from(token);
    let word = chars.slice(0, -1).concat([chars[chars.length - 1] + '</w>']);
    if (word.length === 1) { t.cache.set(token, word); return word; }
    for (;;) {
      let best = null, bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = t.ranks.get(word[i] + ' ' + word[i + 1]);
        if (r !== undefined && r < bestRank) { bestRank = r; best = [word[i], word[i + 1]]; }
      }
      if (best === null) break;
      const out = [];
      for (let i = 0; i < word.length;) {
        if (i < word.length - 1 && word[i] === best[0] && word[i + 1] === best[1]) { out.push(best[0] + best[1]); i += 2; } else { out.push(word[i]); i += 1; }
      }
      word = out;
      if (word.length === 1) break;
    }
    t.cache.set(token, word);
    return word;
  }
  function tokenize(text, contextLength) {
    const t = tokenizer;
    const cleaned = text.normalize('NFC').split(/\s+/).filter(Boolean).join(' ').trim().toLowerCase();
    const ids = [t.sot];
    for (const m of cleaned.matchAll(t.pat)) {
      const bytes = new TextEncoder().encode(m[0]);
      const token = Array.from(bytes, (b) => t.byteEncoder[b]).join('');
      for (const piece of bpe(token)) ids.push(t.encoder.get(piece));
    }
    ids.push(t.eot);
    if (ids.length > contextLength) { ids.length = contextLength; ids[contextLength - 1] = t.eot; }
    const out = new Array(contextLength).fill(0);
    ids.forEach((v, i) => { out[i] = v; });
    return out;
  }

  // ------------------------------------------------------------------ phrases: cleaning, templates, spatial words
  function cleanPhrase(phrase) {
    if (typeof phrase !== 'string') throw new UserError('a text prompt must be a string');
    const cleaned = phrase.split(/\s+/).filter(Boolean).join(' ');
    if (!cleaned) throw new UserError("the text prompt is empty: type a phrase naming the object, e.g. 'the red circle'");
    return cleaned;
  }
  const ARTICLE_BEFORE_SLOT = /(^|\s)(a|an|the|one|my|many)\s+\{\}/i;
  const LEADING_ARTICLE = /^(a|an|the)\s+/i;
  function expand(phrase, templates) {
    const cleaned = cleanPhrase(phrase);
    return templates.map((tpl) => {
      let p = cleaned;
      if (ARTICLE_BEFORE_SLOT.test(tpl)) p = cleaned.replace(LEADING_ARTICLE, '') || cleaned;
      return tpl.replace('{}', p);
    });
  }

  const DIRECTIONS = {left: ['x', -1], right: ['x', 1], top: ['y', -1], bottom: ['y', 1], big: ['area', 1],
    small: ['area', -1], middle: ['centre', -1]};
  const SUPERLATIVE = {leftmost: 'left', 'left-most': 'left', rightmost: 'right', 'right-most': 'right',
    topmost: 'top', uppermost: 'top', upper: 'top', highest: 'top', top: 'top',
    bottommost: 'bottom', lowermost: 'bottom', lower: 'bottom', lowest: 'bottom', bottom: 'bottom',
    biggest: 'big', largest: 'big', bigger: 'big', larger: 'big', smallest: 'small', tiniest: 'small', smaller: 'small',
    closest: 'big', nearest: 'big', closer: 'big', front: 'big', farthest: 'small', furthest: 'small', farther: 'small',
    further: 'small', middle: 'middle', center: 'middle', centre: 'middle', central: 'middle', big: 'big', large: 'big',
    huge: 'big', small: 'small', little: 'small', tiny: 'small'};
  const SIDE_WORDS = {left: 'left', right: 'right', top: 'top', bottom: 'bottom'};
  const ORDINALS = {first: 0, '1st': 0, second: 1, '2nd': 1, third: 2, '3rd': 2, fourth: 3, '4th': 3, fifth: 4, '5th': 4, last: -1};
  const RELATIONS = [['to the left of', 'left'], ['left of', 'left'], ['to the right of', 'right'], ['right of', 'right'],
    ['on the left of', 'left'], ['on the right of', 'right'], ['on the left side of', 'left'],
    ['on the right side of', 'right'], ['on the left hand side of', 'left'], ['on the right hand side of', 'right'],
    ['to the left side of', 'left'], ['to the right side of', 'right'], ['left side of', 'left'],
    ['right side of', 'right'], ['left hand side of', 'left'], ['right hand side of', 'right'],
    ['on top of', 'above'], ['above', 'above'], ['over', 'above'], ['below', 'below'], ['under', 'below'],
    ['underneath', 'below'], ['beneath', 'below'], ['next to', 'near'], ['beside', 'near'], ['near', 'near'],
    ['by', 'near'], ['close to', 'near'], ['closest to', 'near'], ['nearest to', 'near'], ['inside', 'inside'],
    ['within', 'inside'], ['in the middle of', 'inside'], ['on', 'on'], ['behind', 'behind'],
    ['in front of', 'front'], ['far from', 'far'], ['farther from', 'far'], ['farthest from', 'far'],
    ['further from', 'far'], ['furthest from', 'far'], ['between', 'between'], ['in between', 'between']];
  const setOf = (words) => new Set(words.split(' '));
  const PRONOUNS = new Set(['it', 'its', 'them', 'him', 'her', 'itself', 'themselves', 'this', 'that', 'these', 'those',
    'one', 'ones', 'other', 'others', 'each other', 'one another']);
  const NOT_AN_ANCHOR = setOf('its his her their my your by on in at to of with from front back side top bottom left right middle center centre corner edge end background foreground anyone anybody anything someone somebody something everyone everybody everything nobody nothing none');
  const VIEWER = '(?:the\\s+)?(?:camera|viewer|photographer|us)';
  const LINKING = setOf('that which who is are was were being placed located positioned situated standing sitting lying and but or');
  const NEGATIONS = setOf('not never nor neither');
  const NOT_WORDS = setOf('not never nor neither no without');  // textsam.text.spatial._NOT_WORDS
  const DANGLING = setOf('with of in on at by to for from as do does did has have had');
  const PARTS = setOf('hand hands arm arms leg legs foot feet shoe shoes eye eyes ear ears wing wings paw paws glove gloves sleeve knee shoulder half part edge');
  const AFTER_NOUN = setOf('with and or on in at of that which who is are has having wearing holding ,');
  const BEFORE_GARMENT = setOf('white black red green blue yellow orange purple pink brown grey gray dark light striped tank bikini a an');
  const CLAUSE = 'with|and|who|that|which|whose|wearing|holding|having|carrying|sitting|standing|looking|facing|in|on|at|near|next|behind|beside|under|above|below|by|not|no|without';
  const ORDINAL = '(first|second|third|fourth|fifth|1st|2nd|3rd|4th|5th|last)';
  const GROUP_WORDS = ['all the', 'all of the', 'all', 'every', 'each', 'both'];
  const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);
  const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const splitWords = (s) => s.split(/\s+/).filter(Boolean);
  function stripWords(words) {
    words = words.replace(/\s+/g, ' ').replace(/\s+,/g, ',').replace(/^[ ,.]+|[ ,.]+$/g, '');
    return words.replace(/^(the|a|an|this|that)\s+/, '').trim() || words;
  }
  const endsNothing = (w) => LINKING.has(w) || NEGATIONS.has(w) || w === 'the' || w === 'a' || w === 'an';
  function tidy(words) {  // textsam.text.spatial._tidy
    const tokens = splitWords(stripWords(words));
    while (tokens.length > 1 && endsNothing(tokens[tokens.length - 1])) tokens.pop();
    return stripWords(tokens.join(' '));
  }
  const POSITIVE = {not: '', never: '', neither: '', nor: 'or', no: 'with', without: 'with', "can't": 'can', "won't": 'will',
    cannot: 'can'};
  function affirmative(words) {  // textsam.text.spatial._affirmative: [the words without what the object is not, it made positive]
    const tokens = splitWords(words);
    const i = tokens.findIndex((w) => NOT_WORDS.has(w) || w.endsWith("n't"));
    if (i < 0) return [words, null];
    const kept = tokens.slice(0, i);
    while (kept.length && (LINKING.has(kept[kept.length - 1]) || DANGLING.has(kept[kept.length - 1]) ||
           ['the', 'a', 'an'].includes(kept[kept.length - 1]))) kept.pop();
    if (!kept.length) return [words, null];
    const cut = tokens.slice(kept.length).map((t) => (has(POSITIVE, t) ? POSITIVE[t] : t.endsWith("n't") ? t.slice(0, -3) : t));
    return [tidy(kept.join(' ')), cut.filter(Boolean).join(' ') || null];
  }
  function headBefore(words) {  // textsam.text.spatial._head_before
    const tokens = splitWords(words);
    let negated = false;
    while (tokens.length) {
      const w = tokens[tokens.length - 1];
      if (!(LINKING.has(w) || NEGATIONS.has(w) || w.endsWith("n't"))) break;
      negated = negated || NEGATIONS.has(w) || w.endsWith("n't");
      tokens.pop();
    }
    return [tidy(tokens.join(' ')), negated];
  }
  const isAnchor = (anchor) => Boolean(anchor) && !PRONOUNS.has(anchor) && !NOT_AN_ANCHOR.has(splitWords(anchor)[0]) &&
    !new RegExp(`^${VIEWER}$`).test(anchor);  // textsam.text.spatial._is_anchor
  const LONGEST_FIRST = [...RELATIONS].sort((a, b) => b[0].length - a[0].length);
  function clauseRelation(clause) {  // textsam.text.spatial._clause_relation
    const tokens = splitWords(clause);
    let negated = false;
    while (tokens.length && (LINKING.has(tokens[0]) || NEGATIONS.has(tokens[0]) || tokens[0].endsWith("n't"))) {
      negated = negated || NEGATIONS.has(tokens[0]) || tokens[0].endsWith("n't");
      tokens.shift();
    }
    const rest = ` ${tokens.join(' ')} `;
    for (const [words, rel] of LONGEST_FIRST) {
      if (rest.startsWith(` ${words} `)) {
        const anchor = tidy(rest.slice(words.length + 2));
        if (rel === 'between') {
          const pair = betweenAnchors(anchor);
          return pair === null ? null : pair.map((a) => [rel, a, negated]);
        }
        return isAnchor(anchor) ? [[rel, anchor, negated]] : null;
      }
    }
    return null;
  }
  function betweenAnchors(anchor) {  // textsam.text.spatial._between_anchors
    const m = anchor.match(/^(?:two|2|both)\s+(.+)$/);
    let pair;
    if (m) {
      pair = [tidy(m[1]), tidy(m[1])];
    } else {
      // at the "and" before an article where there is one: "the man in a shirt and jeans and the woman"
      const split = anchor.match(/ and (?=(?:the|a|an) )/) || anchor.match(/ and /);
      if (!split) return null;
      pair = [tidy(anchor.slice(0, split.index)), tidy(anchor.slice(split.index + split[0].length))];
    }
    return pair.every(isAnchor) ? pair : null;
  }
  function described(head, more) {  // textsam.text.spatial._described: [head, moreRelations]
    const clauses = more.split(',').map((c) => c.trim()).filter(Boolean);
    const relations = clauses.map(clauseRelation).filter(Boolean).flat();
    const isNegative = (c) => /^(?:and |but )?(?:not|no|neither|nor|never)\b/.test(c);
    const others = clauses.filter((c) => clauseRelation(c) === null);  // the negative ones last: affirmative's
    return [tidy([head, ...others.filter((c) => !isNegative(c)), ...others.filter(isNegative)].join(' ')), relations];
  }
  // textsam.text.spatial._CLAUSE_BREAK: where an anchor ends though no comma says so
  const CLAUSE_BREAK = /\s+(?:and\s+(?=(?:not|no|never|is|are|was|were|isn't|aren't|located|has|have)\b)|but\s+)/g;
  function relationIn(rest) {  // textsam.text.spatial._relation_in
    const found = [];
    for (const [words, rel] of RELATIONS) {
      for (const m of rest.matchAll(new RegExp(`(?<=\\s)${escapeRe(words)}\\s+`, 'g'))) found.push([m.index, -words.length, rel, m]);
    }
    found.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    for (const [, , rel, m] of found) {
      const before = splitWords(rest.slice(0, m.index));
      if (rel === 'on' && ['turned', 'switched', 'powered'].includes(before[before.length - 1])) continue;  // a particle
      const after = rest.slice(m.index + m[0].length).replace(CLAUSE_BREAK, ', ');
      const comma = after.indexOf(',');
      const anchor = tidy(comma < 0 ? after : after.slice(0, comma)), more = comma < 0 ? '' : after.slice(comma + 1);
      const pair = rel === 'between' ? betweenAnchors(anchor) : null;
      if (!isAnchor(anchor) || (rel === 'between' && pair === null)) continue;
      const [head, negated] = headBefore(rest.slice(0, m.index));
      if (!head) continue;
      const [h, moreRelations] = described(head, more);
      if (pair !== null) return [h, [['between', pair[1], negated], ...moreRelations], rel, pair[0], negated];
      return [h, moreRelations, rel, anchor, negated];
    }
    return null;
  }
  function sideWordKept(words, i) {  // textsam.text.spatial._side_word_kept
    const w = words[i], next = words[i + 1];
    if ((w === 'left' || w === 'right') && PARTS.has(next)) return true;
    if (w === 'top' || w === 'bottom') return AFTER_NOUN.has(next) || next.startsWith(',') || (i > 0 && BEFORE_GARMENT.has(words[i - 1]));
    return false;
  }
  const SIDE = '(left|right|top|bottom|middle|center|centre)';
  // textsam.text.spatial.parse
  function parse(phrase) {
    const text = phrase.toLowerCase().replace(/\s+/g, ' ').replace(/^[ .,!?]+|[ .,!?]+$/g, '');
    let rest = ` ${text} `;
    let group = false;
    for (const word of GROUP_WORDS) {
      if (rest.startsWith(` ${word} `)) { group = true; rest = ' ' + rest.slice(word.length + 2); break; }
    }
    let directions = [];
    let rank = 0;
    let m = rest.match(new RegExp(`\\s(?:${ORDINAL}\\s+)?(?:(closest|nearest|closer)\\s+to|(farthest|furthest|farther|further)\\s+(?:away\\s+)?from)\\s+${VIEWER}(?=[\\s,])`));
    if (m) {
      directions = [m[2] ? 'big' : 'small']; rank = m[1] ? ORDINALS[m[1]] : 0;
      rest = rest.slice(0, m.index) + ' ' + rest.slice(m.index + m[0].length);
    }
    m = rest.match(new RegExp(`\\s${ORDINAL}\\s+(.*?)\\s*from\\s+(?:the\\s+)?${SIDE}(?=[\\s,])`));
    if (m && directions.length === 0) {
      directions = [has(SUPERLATIVE, m[3]) ? SUPERLATIVE[m[3]] : m[3]]; rank = ORDINALS[m[1]];
      rest = rest.slice(0, m.index) + ' ' + m[2] + ' ' + rest.slice(m.index + m[0].length);
    }
    m = rest.match(new RegExp(`\\s(?:on|at|in|to)\\s+(?:the\\s+)?(?:very\\s+|far\\s+)?${SIDE}(?:\\s+${SIDE})?(?:\\s+(?:hand\\s+)?(?:side|corner))?(?=\\s*$|\\s*,|\\s+(?:${CLAUSE})\\s)`));
    if (m && directions.length === 0) {
      directions = [m[1], m[2]].filter(Boolean).map((w) => (has(SUPERLATIVE, w) ? SUPERLATIVE[w] : w));
      rest = rest.slice(0, m.index) + ' ' + rest.slice(m.index + m[0].length);
    }
    const rel = relationIn(rest);
    if (rel) {
      const [relHead, moreRelationsRead, relation, anchorRead, negated] = rel;
      const [said, cut] = affirmative(relHead);
      const [h, more, moreRank] = superlatives(said);  // "the biggest dog next to the car"
      if (!directions.length) rank = moreRank;
      const anchor = affirmative(anchorRead)[0];
      const moreRelations = moreRelationsRead.map(([r, a, n]) => [r, affirmative(a)[0], n]);
      const head = h || 'object';
      return {text, head, excluded: cut ? [tidy(`${head} ${cut}`)] : [], directions: [...new Set([...directions, ...more])], rank, relation, anchor, group,
        negated, moreRelations, relations: [[relation, anchor, negated], ...moreRelations]};
    }
    const [said, cut] = affirmative(rest);
    const [h, more, moreRank] = superlatives(said);
    if (!directions.length) rank = moreRank;
    directions = [...directions, ...more];
    const head = h || (directions.length ? 'object' : text);
    return {text, head, excluded: cut ? [tidy(`${head} ${cut}`)] : [], directions: [...new Set(directions)], rank, relation: null, anchor: null, group, negated: false,
      moreRelations: [], relations: []};
  }
  function superlatives(phrase) {  // textsam.text.spatial._superlatives
    const words = splitWords(phrase);
    const kept = [], directions = [];
    let rank = 0;
    words.forEach((w, i) => {
      const isLast = i === words.length - 1;
      if (!isLast && has(SIDE_WORDS, w) && sideWordKept(words, i)) kept.push(w);
      else if ((w === 'far' || w === 'very' || w === 'extreme') && !isLast && has(SIDE_WORDS, words[i + 1])) { /* "far right": the side word says it */ }
      else if (has(SUPERLATIVE, w) && !isLast && (!(w === 'top' || w === 'bottom') || words[i + 1] !== 'of')) directions.push(SUPERLATIVE[w]);
      else if (has(SIDE_WORDS, w) && !isLast && words[i + 1] !== 'of' && words[i + 1] !== 'side') directions.push(SIDE_WORDS[w]);
      else if (has(ORDINALS, w) && !isLast && (has(SUPERLATIVE, words[i + 1]) || has(SIDE_WORDS, words[i + 1]))) rank = ORDINALS[w];
      else kept.push(w);
    });
    return [kept.length ? tidy(kept.join(' ')) : '', directions, rank];
  }
  // textsam.text.spatial.Query.describe: the reading in a few words, for people
  const DESCRIBED_DIRECTIONS = {left: 'leftmost', right: 'rightmost', top: 'topmost', bottom: 'bottommost', big: 'biggest',
    small: 'smallest', middle: 'most central'};
  const COUNTED_FROM = {left: 'from the left', right: 'from the right', top: 'from the top', bottom: 'from the bottom',
    big: 'by size, biggest first', small: 'by size, smallest first', middle: 'from the centre'};
  const DESCRIBED_RELATIONS = {left: 'left of', right: 'right of', far: 'far from', front: 'in front of'};
  function describe(q) {
    const parts = [(q.group ? 'every ' : '') + `'${q.head}'`];
    q.directions.forEach((d, n) => {
      const rank = n === 0 ? q.rank : 0;
      parts.push(rank === 0 ? DESCRIBED_DIRECTIONS[d] : rank < 0 ? `the last ${COUNTED_FROM[d]}` : `number ${rank + 1} ${COUNTED_FROM[d]}`);
    });
    for (let k = 0; k < q.relations.length;) {
      const [name, anchor, negated] = q.relations[k];
      let words;
      if (name === 'between' && k + 1 < q.relations.length) { words = `between '${anchor}' and '${q.relations[k + 1][1]}'`; k += 2; }
      else { words = `${has(DESCRIBED_RELATIONS, name) ? DESCRIBED_RELATIONS[name] : name} '${anchor}'`; k += 1; }
      parts.push((negated ? 'not ' : '') + words);
    }
    for (const e of q.excluded || []) parts.push(`not like '${e}'`);
    return parts.join(', ');
  }
  // textsam.text.spatial._relation_terms: prod_r sum_{j != i} R_r(i, j) P_anchor_r(j) per candidate (null without
  // a relation)
  function relationTerms(q, boxes, cx, cy, anchor, moreAnchors) {
    if (!q.relation || !anchor) return null;
    const n = boxes.length, out = new Float64Array(n).fill(1), anchors = [anchor, ...moreAnchors];
    for (let k = 0; k < Math.min(q.relations.length, anchors.length);) {
      const [rel, , negated] = q.relations[k], p = anchors[k];
      if (rel === 'between' && k + 1 < anchors.length) {  // two entries: sum_{j != l} B(i, j, l) Pa(j) Pb(l)
        const p2 = anchors[k + 1];
        for (let i = 0; i < n; i++) {
          let s = 0;
          for (let j = 0; j < n; j++) {
            for (let l = 0; l < n; l++) {
              if (i === j || i === l || j === l) continue;
              const b = between(cx, cy, i, j, l);
              s += (negated ? 1 - b : b) * p[j] * p2[l];
            }
          }
          out[i] *= s;
        }
        k += 2;
        continue;
      }
      for (let i = 0; i < n; i++) {
        let s = 0;
        for (let j = 0; j < n; j++) {
          if (j === i) continue;
          const r = relation(boxes, cx, cy, rel, i, j);
          s += (negated ? 1 - r : r) * p[j];
        }
        out[i] *= s;
      }
      k += 1;
    }
    return out;
  }
  // textsam.text.spatial.support: how well each candidate stands where the phrase puts it, for a set's members
  function support(q, boxes, size, anchor, moreAnchors = []) {
    const n = boxes.length, cx = boxes.map((b) => (b[0] + b[2]) / 2), cy = boxes.map((b) => (b[1] + b[3]) / 2);
    let out = new Float64Array(n).fill(1);
    const terms = relationTerms(q, boxes, cx, cy, anchor, moreAnchors);
    if (terms) {
      const top = n ? Math.max(...terms) : 0;
      out = top > 0 ? Float64Array.from(terms, (t) => Math.min(Math.max(t / top, 0), 1)) : new Float64Array(n);
    }
    if (q.group) {
      const [h, w] = size;
      const half = {left: (i) => cx[i] < w / 2, right: (i) => cx[i] >= w / 2, top: (i) => cy[i] < h / 2,
        bottom: (i) => cy[i] >= h / 2};
      for (const d of q.directions) if (half[d]) for (let i = 0; i < n; i++) if (!half[d](i)) out[i] = 0;
    }
    return out;
  }
  // textsam.text.spatial.resolve: probabilities over candidates re-ranked by geometry (boxes inclusive, pixels)
  function resolve(q, head, boxes, size, anchor, moreAnchors = []) {
    const n = head.length;
    if (n < 2) return head;
    const cx = boxes.map((b) => (b[0] + b[2]) / 2), cy = boxes.map((b) => (b[1] + b[3]) / 2);
    let probs = head;
    const terms = relationTerms(q, boxes, cx, cy, anchor, moreAnchors);
    if (terms) {  // the relations first (they multiply), then the superlatives over what they leave
      const out = Float64Array.from(head, (v, i) => v * terms[i]);
      const total = out.reduce((a, b) => a + b, 0);
      if (total > 0) probs = Array.from(out, (v) => v / total);
    }
    if (!q.directions.length) return probs;
    const out = Float64Array.from(probs);
    q.directions.forEach((direction, k) => {
      const [key, sign] = DIRECTIONS[direction];
      const value = boxes.map((b, i) => {
        if (key === 'x') return sign * cx[i];
        if (key === 'y') return sign * cy[i];
        if (key === 'area') return sign * (b[2] - b[0]) * (b[3] - b[1]);
        const [h, w] = size;
        return sign * (((cx[i] - w / 2) / w) ** 2 + ((cy[i] - h / 2) / h) ** 2);
      });
      const rank = k === 0 ? q.rank : 0;
      const mx = Math.max(Math.max(...probs), 1e-12);
      for (let i = 0; i < n; i++) {
        if (rank === 0) {
          let s = probs[i];
          for (let j = 0; j < n; j++) if (value[i] > value[j]) s += probs[j];
          out[i] *= s;
        } else {
          let count = 0;
          for (let j = 0; j < n; j++) {
            if (rank > 0 ? value[j] > value[i] : value[i] > value[j]) count += probs[j] / mx;
          }
          out[i] *= Math.exp(-((count - Math.max(rank, 0)) ** 2) / 0.5);
        }
      }
    });
    const total = out.reduce((a, b) => a + b, 0);
    return total > 0 ? Array.from(out, (v) => v / total) : probs;
  }
  // textsam.text.spatial._between: how well candidate i lies between candidates j and l (centres)
  function between(cx, cy, i, j, l) {
    const sx = cx[l] - cx[j], sy = cy[l] - cy[j], rx = cx[i] - cx[j], ry = cy[i] - cy[j];
    const length2 = Math.max(sx * sx + sy * sy, 1e-6);
    const t = (rx * sx + ry * sy) / length2;
    const perp = Math.hypot(rx - t * sx, ry - t * sy) / Math.sqrt(length2);
    return t > 0 && t < 1 ? Math.min(Math.max(1 - 2 * perp, 0), 1) : 0;
  }
  // textsam.text.spatial._relation: how well candidate i stands in the relation to candidate j
  function relation(boxes, cx, cy, rel, i, j) {
    const [x0, y0, x1, y1] = boxes[i], [u0, v0, u1, v1] = boxes[j];
    const w = Math.max(x1 - x0, 1), h = Math.max(y1 - y0, 1), wj = Math.max(u1 - u0, 1), hj = Math.max(v1 - v0, 1);
    if (rel === 'left') return cx[i] < cx[j] ? 1 : 0;
    if (rel === 'right') return cx[i] > cx[j] ? 1 : 0;
    if (rel === 'above' || rel === 'on' || rel === 'behind') return cy[i] < cy[j] ? 1 : 0;
    if (rel === 'below' || rel === 'front') return cy[i] > cy[j] ? 1 : 0;
    if (rel === 'inside') {
      const ix = Math.max(Math.min(x1, u1) - Math.max(x0, u0), 0), iy = Math.max(Math.min(y1, v1) - Math.max(y0, v0), 0);
      return (ix * iy) / (w * h);
    }
    const d = Math.hypot(cx[i] - cx[j], cy[i] - cy[j]);
    const near = Math.exp(-d / ((w + h) / 2 + (wj + hj) / 2));
    return rel === 'far' ? 1 - near : near;
  }

  // ------------------------------------------------------------------ masks: deepest points, NMS, boxes, RLE
  // textsam.ops.deepest_points: the pixel farthest from the mask's edge (chessboard), first in raster order
  function deepestPoint(mask, h, w) {
    let m = Uint8Array.from(mask);
    const depth = new Int32Array(h * w);
    let any = m.some((v) => v);
    if (!any) return [Math.floor(w / 2), Math.floor(h / 2)];
    const rounds = Math.floor((Math.max(h, w) + 1) / 2);
    for (let r = 0; r < rounds && any; r++) {
      for (let i = 0; i < h * w; i++) depth[i] += m[i];
      const next = new Uint8Array(h * w);
      any = false;
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          let v = 1;
          for (let dy = -1; dy <= 1 && v; dy++) {
            for (let dx = -1; dx <= 1; dx++) {
              const yy = y + dy, xx = x + dx;
              if (yy < 0 || yy >= h || xx < 0 || xx >= w || !m[yy * w + xx]) { v = 0; break; }
            }
          }
          next[y * w + x] = v;
          if (v) any = true;
        }
      }
      m = next;
    }
    const i = argmax(depth);
    return [i % w, Math.floor(i / w)];
  }
  // textsam.ops.mask_nms: greedy, highest score first, empty masks dropped
  function maskNms(masks, scores, threshold) {
    const order = scores.map((s, i) => i).sort((a, b) => scores[b] - scores[a] || a - b);
    const areas = masks.map((m) => m.reduce((a, v) => a + v, 0));
    const keep = [];
    for (const i of order) {
      if (areas[i] === 0) continue;
      let ok = true;
      for (const j of keep) {
        let inter = 0;
        const a = masks[i], b = masks[j];
        for (let p = 0; p < a.length; p++) inter += a[p] & b[p];
        const union = areas[i] + areas[j] - inter;
        if (inter / Math.max(1, union) > threshold) { ok = false; break; }
      }
      if (ok) keep.push(i);
    }
    return keep;
  }
  function maskBox(mask, h, w) { // inclusive x0, y0, x1, y1; [0, 0, 0, 0] when empty
    let x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) if (mask[y * w + x]) {
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    return x1 < 0 ? [0, 0, 0, 0] : [x0, y0, x1, y1];
  }
  // COCO RLE (column-major runs, starting with background), compressed as pycocotools' rleToString
  function cocoRle(mask, h, w) {
    const counts = [];
    let prev = 0, run = 0;
    for (let x = 0; x < w; x++) for (let y = 0; y < h; y++) {
      const v = mask[y * w + x] ? 1 : 0;
      if (v !== prev) { counts.push(run); run = 0; prev = v; }
      run++;
    }
    counts.push(run);
    let s = '';
    counts.forEach((c, i) => {
      let x = i > 2 ? c - counts[i - 2] : c;
      for (let more = true; more;) {
        let ch = x & 0x1f;
        x >>= 5;
        more = (ch & 0x10) ? x !== -1 : x !== 0;
        if (more) ch |= 0x20;
        s += String.fromCharCode(ch + 48);
      }
    });
    return {size: [h, w], counts: s};
  }

  // ------------------------------------------------------------------ ONNX sessions
  const sessions = {};
  async function session(name) {
    if (!sessions[name]) {
      const file = api.manifest.graphs[name];
      sessions[name] = ort.InferenceSession.create(file, {executionProviders: ['wasm'], graphOptimizationLevel: 'all'});
    }
    return sessions[name];
  }
  // For a big model onnxruntime-web runs in its proxy worker (manifest "worker": the page stays responsive while
  // the encoder computes for seconds). The worker takes the inputs' buffers over, so each run then gets copies
  // and cached tensors (the image embedding) stay usable.
  async function run(name, feeds) {
    const s = await session(name);
    const used = {};
    for (const k of s.inputNames) {
      used[k] = api.manifest.worker ? new ort.Tensor(feeds[k].type, feeds[k].data.slice(), feeds[k].dims) : feeds[k];
    }
    return s.run(used);
  }
  const f32 = (data, dims) => new ort.Tensor('float32', data instanceof Float32Array ? data : Float32Array.from(data), dims);

  // ------------------------------------------------------------------ the current image
  let img = null; // {rgb, H, W, inputH, inputW, embedding, rgbPadded, candidates, proposals, crops}
  const textCaches = new Map(); // per text graph: sentence -> {embedding, words (length x W), end, length}

  async function decodeImage(source) {
    let blob = source;
    if (typeof source === 'string') {
      const response = await fetch(source);
      if (!response.ok) throw new UserError(`cannot open ${source}: HTTP ${response.status}`);
      blob = await response.blob();
    }
    const notAnImage = () => new UserError(`${blob.name || 'this file'} is not an image the browser can read: choose a PNG, JPEG, WebP or GIF`);
    // the size first, from the file's header (an <img> learns it without decoding every pixel)
    const url = URL.createObjectURL(blob);
    const [w0, h0] = await new Promise((resolve, reject) => {
      const el = new Image();
      el.onload = () => resolve([el.naturalWidth, el.naturalHeight]);
      el.onerror = () => reject(notAnImage());
      el.src = url;
    }).finally(() => URL.revokeObjectURL(url));
    if (w0 * h0 > MAX_PIXELS) {
      throw new UserError(`the image is too large (${w0} x ${h0} pixels): the page takes up to ${MAX_PIXELS / 1e6} megapixels; downscale it first`);
    }
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob, {imageOrientation: 'from-image', colorSpaceConversion: 'none', premultiplyAlpha: 'none'});
    } catch (err) {
      throw notAnImage();
    }
    const {width: W, height: H} = bitmap;
    const canvas = new OffscreenCanvas(W, H);
    const ctx = canvas.getContext('2d', {willReadFrequently: true});
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    const rgba = ctx.getImageData(0, 0, W, H, {colorSpace: 'srgb'}).data;
    const rgb = new Uint8Array(W * H * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
    return {rgb, H, W};
  }

  async function loadImage(source) {
    await api.ready;
    const t0 = now();
    const {rgb, H, W} = await decodeImage(source);
    const t1 = now();
    const m = api.manifest, S = m.img_size;
    const [inputH, inputW] = preprocessShape(H, W, S);
    const resized = resizePIL(rgb, H, W, inputH, inputW, 'bilinear');
    const x = new Float32Array(3 * S * S), rgbPadded = new Float32Array(3 * S * S);
    for (let y = 0; y < inputH; y++) for (let xx = 0; xx < inputW; xx++) {
      for (let c = 0; c < 3; c++) {
        const v = resized[(y * inputW + xx) * 3 + c];
        x[c * S * S + y * S + xx] = (v - m.pixel_mean[c]) / m.pixel_std[c];
        rgbPadded[c * S * S + y * S + xx] = v / 255;
      }
    }
    const out = await run('encoder', {image: f32(x, [1, 3, S, S])});
    const t2 = now();
    img = {rgb, H, W, inputH, inputW, embedding: out.embedding, rgbPadded};
    let prepare = 0;
    if (m.text) { // the text candidates (or proposals) and their CLIP crops, once per image
      await cropEmbeddings();
      prepare = now() - t2;
    }
    api.timings = {decode_ms: t1 - t0, embed_ms: t2 - t1, prepare_ms: prepare};
    return {width: W, height: H};
  }

  // textsam.modeling.seeds.embedding_seeds: one click per region of the image embedding (model-input frame);
  // lo: {clusters, min_region_tokens, max_seeds} (the locator's, or the engine's)
  function embeddingSeeds(lo) {
    const m = api.manifest;
    const [, c, h, w] = img.embedding.dims;
    const data = img.embedding.data;
    const patch = m.img_size / w;
    const vh = Math.max(1, Math.min(h, Math.ceil(img.inputH / patch))), vw = Math.max(1, Math.min(w, Math.ceil(img.inputW / patch)));
    const n = vh * vw;
    const x = new Float64Array(n * c);
    for (let y = 0; y < vh; y++) for (let xx = 0; xx < vw; xx++) {
      const r = y * vw + xx;
      let norm = 0;
      for (let k = 0; k < c; k++) { const v = data[k * h * w + y * w + xx]; x[r * c + k] = v; norm += v * v; }
      norm = Math.max(Math.sqrt(norm), 1e-12);
      for (let k = 0; k < c; k++) x[r * c + k] /= norm;
    }
    const groups = sphericalKmeans(x, n, c, lo.clusters);
    // 4-connected regions named by their first cell in raster order
    const region = new Int32Array(n).fill(-1);
    for (let s = 0; s < n; s++) {
      if (region[s] >= 0) continue;
      const stack = [s];
      region[s] = s;
      while (stack.length) {
        const p = stack.pop(), py = Math.floor(p / vw), px = p % vw;
        for (const [dy, dx] of [[0, 1], [0, -1], [1, 0], [-1, 0]]) {
          const yy = py + dy, xx = px + dx, q = yy * vw + xx;
          if (yy >= 0 && yy < vh && xx >= 0 && xx < vw && region[q] < 0 && groups[q] === groups[s]) { region[q] = s; stack.push(q); }
        }
      }
    }
    const sizes = new Map();
    for (const r of region) sizes.set(r, (sizes.get(r) || 0) + 1);
    const names = [...sizes.keys()].sort((a, b) => sizes.get(b) - sizes.get(a) || a - b)
      .filter((r) => sizes.get(r) >= lo.min_region_tokens).slice(0, lo.max_seeds);
    return names.map((name) => {
      const mask = Uint8Array.from(region, (r) => (r === name ? 1 : 0));
      const [tx, ty] = deepestPoint(mask, vh, vw);
      return [Math.min((tx + 0.5) * patch - 0.5, img.inputW - 1), Math.min((ty + 0.5) * patch - 0.5, img.inputH - 1)];
    });
  }
  function sphericalKmeans(x, n, c, k) {
    k = Math.min(k, n);
    const dot = (i, centre) => { let s = 0; for (let d = 0; d < c; d++) s += x[i * c + d] * centre[d]; return s; };
    const row = (i) => x.subarray(i * c, (i + 1) * c);
    const mean = new Float64Array(c);
    for (let i = 0; i < n; i++) for (let d = 0; d < c; d++) mean[d] += x[i * c + d] / n;
    let first = 0, low = Infinity;
    for (let i = 0; i < n; i++) { const v = dot(i, mean); if (v < low) { low = v; first = i; } }
    let centres = [row(first)];
    const distance = new Float64Array(n);
    for (let i = 0; i < n; i++) distance[i] = 1 - dot(i, centres[0]);
    for (let j = 1; j < k; j++) {
      const far = argmax(distance);
      centres.push(row(far));
      for (let i = 0; i < n; i++) distance[i] = Math.min(distance[i], 1 - dot(i, centres[j]));
    }
    const assign = () => Int32Array.from({length: n}, (_, i) => {
      let best = 0, bv = -Infinity;
      centres.forEach((ce, j) => { const v = dot(i, ce); if (v > bv) { bv = v; best = j; } });
      return best;
    });
    let groups = assign();
    for (let it = 0; it < 10; it++) {
      centres = centres.map(() => new Float64Array(c));
      for (let i = 0; i < n; i++) for (let d = 0; d < c; d++) centres[groups[i]][d] += x[i * c + d];
      for (const ce of centres) { const norm = Math.max(Math.hypot(...ce), 1e-12); for (let d = 0; d < c; d++) ce[d] /= norm; }
      const next = assign();
      if (next.every((g, i) => g === groups[i])) break;
      groups = next;
    }
    return groups;
  }

  // the decoder on a batch of point prompts: low-res logits (B, 4, L, L) and IoU (B, 4)
  async function decode(prompts, textEmbedding) {
    const nPoints = Math.max(0, ...prompts.map((p) => p.length));
    const b = prompts.length;
    const coords = new Float32Array(b * nPoints * 2), labels = new Float32Array(b * nPoints).fill(-1);
    prompts.forEach((p, i) => p.forEach(([x, y, l], j) => {
      coords[(i * nPoints + j) * 2] = x; coords[(i * nPoints + j) * 2 + 1] = y; labels[i * nPoints + j] = l;
    }));
    const feeds = {image_embeddings: img.embedding, point_coords: f32(coords, [b, nPoints, 2]), point_labels: f32(labels, [b, nPoints])};
    if (textEmbedding) { // the phrase's embedding on every row of the batch
      const d = textEmbedding.length, rows = new Float32Array(b * d);
      for (let i = 0; i < b; i++) rows.set(textEmbedding, i * d);
      feeds.text_embedding = f32(rows, [b, d]);
    }
    const out = await run(textEmbedding ? 'decoder_text' : 'decoder', feeds);
    return {low: out.low_res_masks.data, iou: out.iou_predictions.data, size: out.low_res_masks.dims[2]};
  }

  // the locator's candidate objects: each seed click's most confident mask, filtered, NMS (low-res, input frame)
  async function candidates() {
    if (img.candidates) return img.candidates;
    const lo = api.manifest.text.locator, thr = api.manifest.mask_threshold;
    const seeds = embeddingSeeds(api.manifest.text.locator);
    const masks = [], scores = [];
    if (seeds.length) {
      const {low, iou, size} = await decode(seeds.map(([x, y]) => [[x, y, 1], [0, 0, -1]]));
      const area = size * size;
      seeds.forEach((_, i) => {
        const best = argmax(iou, i * 4 + 1, i * 4 + 4) - i * 4;
        if (iou[i * 4 + best] < lo.min_iou) return;
        const off = (i * 4 + best) * area;
        const mask = new Uint8Array(area);
        let any = false;
        for (let p = 0; p < area; p++) if (low[off + p] > thr) { mask[p] = 1; any = true; }
        if (any) { masks.push(mask); scores.push(iou[i * 4 + best]); }
      });
    }
    const keep = maskNms(masks, scores, lo.nms_iou).slice(0, lo.max_candidates);
    const size = api.manifest.low_res_size[0];
    img.candidates = {masks: keep.map((i) => masks[i]), scores: keep.map((i) => scores[i]), size};
    return img.candidates;
  }

  // low-res logits (B, 1, L, L) -> original-frame logits (B, H, W)
  async function upsample(logits, b) {
    const L = api.manifest.low_res_size[0];
    const out = await run('upsample', {low_res_masks: f32(logits, [b, 1, L, L]), orig_im_size: f32([img.H, img.W], [2])});
    return out.masks.data;
  }

  // the image's proposals: original-frame masks, inclusive boxes, predicted IoU and the click that made each.
  // With a text head: the locator's candidates (the engine only answers presence); without: SAM's automatic mask
  // generation on a coarse grid (textsam.modeling.proposals.quick_proposals)
  async function proposalSet() {
    if (img.proposals) return img.proposals;
    const props = {masks: [], boxes: [], iou: [], points: []};
    let lows = [], L = api.manifest.low_res_size[0];
    if (api.manifest.text.mode === 'head') {
      const cand = await candidates();
      lows = cand.masks.map((mk) => Float32Array.from(mk, (v) => v * 2 - 1));
      props.iou = cand.scores.slice(); // no clicks: the head's locator clicks, the engine only answers presence
    } else {
      const found = await engineProposals();
      lows = found.lows; props.iou = found.iou; props.points = found.points;
    }
    const n = lows.length, area = img.H * img.W;
    if (n) {
      const logits = new Float32Array(n * L * L);
      lows.forEach((low, i) => logits.set(low, i * L * L));
      const up = await upsample(logits, n);
      for (let i = 0; i < n; i++) {
        const mask = new Uint8Array(area);
        for (let p = 0; p < area; p++) mask[p] = up[i * area + p] > api.manifest.mask_threshold ? 1 : 0;
        props.masks.push(mask);
        props.boxes.push(maskBox(mask, img.H, img.W));
      }
    }
    img.proposals = props;
    return props;
  }

  // quick_proposals: the engine's clicks (TextEngine.proposals: one per region of the image embedding, or SAM's
  // grid) decoded in batches, predicted-IoU and stability filters, box NMS, the best by IoU
  async function engineProposals() {
    const m = api.manifest, o = m.text.proposals, thr = m.mask_threshold, S = m.img_size;
    const grid = [];
    if (o.seeds === 'embedding') { // model-input frame -> original pixels, as TextEngine.proposals does
      const rx = img.W / img.inputW, ry = img.H / img.inputH;
      for (const [x, y] of embeddingSeeds(o)) grid.push([x * rx, y * ry]);
    } else {
      const n = o.points_per_side;
      for (let j = 0; j < n; j++) for (let i = 0; i < n; i++) {
        const off = 1 / (2 * n), step = n > 1 ? (1 - 2 * off) / (n - 1) : 0;
        grid.push([(off + i * step) * img.W, (off + j * step) * img.H]);
      }
    }
    const sx = img.inputW / img.W, sy = img.inputH / img.H;
    const lows = [], ious = [], points = [];
    let side = m.low_res_size[0];
    for (let start = 0; start < grid.length; start += o.points_per_batch) {
      const batch = grid.slice(start, start + o.points_per_batch);
      const {low, iou, size} = await decode(batch.map(([x, y]) => [[x * sx, y * sy, 1], [0, 0, -1]]));
      side = size;
      const vh = Math.ceil((img.inputH * side) / S), vw = Math.ceil((img.inputW * side) / S), area = side * side;
      batch.forEach((point, r) => {
        if (o.pred_iou_thresh > 0 && Math.max(iou[r * 4 + 1], iou[r * 4 + 2], iou[r * 4 + 3]) < o.pred_iou_thresh) return;
        for (let k = 1; k < 4; k++) {
          const score = iou[r * 4 + k];
          if (o.pred_iou_thresh > 0 && !(score > o.pred_iou_thresh)) continue;
          const mask = low.subarray((r * 4 + k) * area, (r * 4 + k + 1) * area);
          let inter = 0, union = 0;
          for (let y = 0; y < vh; y++) for (let x = 0; x < vw; x++) {
            const v = mask[y * side + x];
            if (v > thr + o.stability_score_offset) inter++;
            if (v > thr - o.stability_score_offset) union++;
          }
          if (o.stability_score_thresh > 0 && !(inter / union >= o.stability_score_thresh)) continue;
          lows.push(Float32Array.from(mask)); ious.push(score); points.push(point);
        }
      });
    }
    const sxb = (S / side) * (img.W / img.inputW), syb = (S / side) * (img.H / img.inputH);
    const boxes = lows.map((low) => {
      const b = maskBox(Uint8Array.from(low, (v) => (v > thr ? 1 : 0)), side, side);
      return [Math.floor(b[0] * sxb), Math.floor(b[1] * syb), Math.ceil((b[2] + 1) * sxb) - 1, Math.ceil((b[3] + 1) * syb) - 1]
        .map((v, i) => Math.min(Math.max(v, 0), i % 2 === 0 ? img.W - 1 : img.H - 1));
    });
    const keep = boxNms(boxes, ious, o.box_nms_thresh)
      .sort((a, b) => ious[b] - ious[a]).slice(0, m.text.max_proposals); // Array.sort is stable
    return {lows: keep.map((i) => lows[i]), iou: keep.map((i) => ious[i]), points: keep.map((i) => points[i])};
  }
  // torchvision.ops.nms: highest score first; drop boxes whose IoU with a kept one exceeds the threshold
  function boxNms(boxes, scores, threshold) {
    const order = scores.map((_, i) => i).sort((a, b) => scores[b] - scores[a]);
    const area = boxes.map((b) => (b[2] - b[0]) * (b[3] - b[1]));
    const removed = new Uint8Array(boxes.length), keep = [];
    for (const i of order) {
      if (removed[i]) continue;
      keep.push(i);
      for (const j of order) {
        if (removed[j] || j === i) continue;
        const w = Math.max(0, Math.min(boxes[i][2], boxes[j][2]) - Math.max(boxes[i][0], boxes[j][0]));
        const h = Math.max(0, Math.min(boxes[i][3], boxes[j][3]) - Math.max(boxes[i][1], boxes[j][1]));
        if ((w * h) / (area[i] + area[j] - w * h) > threshold) removed[j] = 1;
      }
    }
    return keep;
  }

  // the proposals' CLIP crop embeddings (textsam.text.scoring, the "crop" view), once per image
  async function cropEmbeddings() {
    if (img.crops) return img.crops;
    const props = await proposalSet();
    const n = props.masks.length;
    if (n === 0) { img.crops = []; return img.crops; }
    const recipe = api.manifest.text.clip_image, R = recipe.size, enlarge = api.manifest.text.engine.enlarge;
    const batch = new Float32Array(n * 3 * R * R);
    props.boxes.forEach((box, i) => {
      const [x0, y0, x1, y1] = [box[0], box[1], box[2] + 1, box[3] + 1];
      const side = Math.max(1.0, Math.max(x1 - x0, y1 - y0) * enlarge), cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
      const wx0 = roundHalfEven(cx - side / 2), wy0 = roundHalfEven(cy - side / 2);
      const wx1 = roundHalfEven(cx + side / 2), wy1 = roundHalfEven(cy + side / 2);
      const cw = wx1 - wx0, ch = wy1 - wy0;
      const crop = new Uint8Array(cw * ch * 3); // PIL crop: outside the image is black
      for (let y = 0; y < ch; y++) {
        const sy = y + wy0;
        if (sy < 0 || sy >= img.H) continue;
        for (let x = 0; x < cw; x++) {
          const sx = x + wx0;
          if (sx < 0 || sx >= img.W) continue;
          const s = (sy * img.W + sx) * 3, d = (y * cw + x) * 3;
          crop[d] = img.rgb[s]; crop[d + 1] = img.rgb[s + 1]; crop[d + 2] = img.rgb[s + 2];
        }
      }
      // open_clip's Resize(R) of the shorter side, then the centre R x R, then Normalize
      const rh = ch <= cw ? R : Math.trunc((R * ch) / cw), rw = cw <= ch ? R : Math.trunc((R * cw) / ch);
      const resized = resizePIL(crop, ch, cw, rh, rw, recipe.interpolation);
      const top = roundHalfEven((rh - R) / 2), left = roundHalfEven((rw - R) / 2);
      for (let c = 0; c < 3; c++) for (let y = 0; y < R; y++) for (let x = 0; x < R; x++) {
        const v = resized[((y + top) * rw + x + left) * 3 + c] / 255;
        batch[((i * 3 + c) * R + y) * R + x] = (v - recipe.mean[c]) / recipe.std[c];
      }
    });
    const out = await run('clip_image', {image: f32(batch, [n, 3, R, R])});
    const d = out.embedding.dims[1];
    img.crops = Array.from({length: n}, (_, i) => out.embedding.data.subarray(i * d, (i + 1) * d));
    return img.crops;
  }

  // CLIP text: unit embeddings (and per-token features) of sentences, cached
  // graph: 'clip_text' (the CLIP that scores crops) or 'clip_text_head' (a text head's own fine-tuned tower)
  async function encodeTexts(sentences, graph = 'clip_text') {
    const t = api.manifest.text, T = t.context_length;
    if (!textCaches.has(graph)) textCaches.set(graph, new Map());
    const textCache = textCaches.get(graph);
    const missing = [...new Set(sentences.filter((s) => !textCache.has(s)))];
    if (missing.length) {
      const rows = missing.map((s) => tokenize(s, T));
      // a graph that takes any length runs the longest sentence's tokens, not all T positions: the tower is
      // causal, so the padding after a sentence's end token never reaches its embedding
      const n = t.any_length ? Math.max(...rows.map((r) => argmax(r) + 1)) : T;
      const tokens = new BigInt64Array(missing.length * n);
      rows.forEach((r, i) => { for (let j = 0; j < n; j++) tokens[i * n + j] = BigInt(r[j]); });
      const out = await run(graph, {tokens: new ort.Tensor('int64', tokens, [missing.length, n])});
      const d = out.embedding.dims[1], w = out.words.dims[2];
      missing.forEach((s, i) => {
        const end = argmax(rows[i]);
        textCache.set(s, {embedding: out.embedding.data.slice(i * d, (i + 1) * d),
          words: out.words.data.slice(i * n * w, (i + 1) * n * w), end, length: n});
      });
    }
    return sentences.map((s) => textCache.get(s));
  }
  async function ensemble(phrase) { // textsam TextEncoder.encode_ensemble
    const sentences = expand(phrase, api.manifest.text.templates);
    const rows = await encodeTexts(sentences);
    const d = rows[0].embedding.length, mean = new Float64Array(d);
    for (const r of rows) for (let k = 0; k < d; k++) mean[k] += r.embedding[k] / rows.length;
    const norm = Math.max(Math.hypot(...mean), 1e-12);
    return Array.from(mean, (v) => v / norm);
  }

  // textsam.text.engine.TextEngine.rank: the proposal(s) a phrase names, its presence, and the proposal what the
  // phrase excludes names (a background click). A user's positive click or box keeps only the proposals it touches
  // (all of them when none does).
  async function rank(phrase, userPoints, userBox) {
    const e = api.manifest.text.engine, crops = await cropEmbeddings(), props = img.proposals;
    const q = parse(phrase);
    if (crops.length === 0) return {q, chosen: [], presence: 0, background: null};
    const anchorTexts = q.relations.map((r) => r[1]);
    const texts = [q.head, ...anchorTexts, ...q.excluded];
    const emb = await Promise.all(texts.map(ensemble));
    const rows = emb.map((t) => crops.map((c) => c.reduce((s, v, k) => s + v * t[k], 0)));
    const cos = rows.slice(0, 1 + anchorTexts.length), negatives = rows.slice(1 + anchorTexts.length);
    let allowed = null;
    const positives = userPoints.filter((p) => p[2] === 1);
    if (userBox || positives.length) {
      allowed = props.masks.map((mask) => {
        let ok = true;
        for (const [x, y] of positives) {
          const xi = Math.min(Math.max(roundHalfEven(x), 0), img.W - 1), yi = Math.min(Math.max(roundHalfEven(y), 0), img.H - 1);
          ok = ok && mask[yi * img.W + xi] === 1;
        }
        if (userBox) {
          const [x0, y0, x1, y1] = userBox.map(roundHalfEven);
          let inside = 0, total = 0;
          for (let p = 0; p < mask.length; p++) total += mask[p];
          for (let y = Math.max(y0, 0); y <= Math.min(y1, img.H - 1); y++) {
            for (let x = Math.max(x0, 0); x <= Math.min(x1, img.W - 1); x++) inside += mask[y * img.W + x];
          }
          ok = ok && inside >= 0.5 * Math.max(total, 1);
        }
        return ok;
      });
      if (!allowed.some(Boolean)) allowed = null;
    }
    const sig = (c) => 1 / (1 + Math.exp(-e.presence_gain * (c - e.presence_bias)));
    // what the phrase excludes ("circle that is red"): a candidate more like it than like the head, or one of its
    // members, is neither chosen nor a member, unless every candidate is
    let rejected = null;
    if (negatives.length) {
      rejected = cos[0].map((c, i) => !(allowed && !allowed[i]) &&
        negatives.some((row) => row[i] > c || sig(row[i]) >= e.presence_threshold));
      const candidates = cos[0].filter((_, i) => !(allowed && !allowed[i])).length;
      if (rejected.filter(Boolean).length >= candidates) rejected = null;
    }
    const scale = api.manifest.text.logit_scale;
    const softmax = (row, skip = null) => {
      const logits = row.map((c, i) => (((allowed && !allowed[i]) || (skip && skip[i])) ? -Infinity
        : scale * (c + e.iou_weight * props.iou[i])));
      const mx = Math.max(...logits), ex = logits.map((v) => Math.exp(v - mx)), s = ex.reduce((a, b) => a + b, 0);
      return ex.map((v) => v / s);
    };
    const anchors = cos.slice(1).map((row) => softmax(row));
    const probs = resolve(q, softmax(cos[0], rejected), props.boxes, [img.H, img.W], anchors.length ? anchors[0] : null, anchors.slice(1));
    // a set's members must also stand where the phrase puts them ("all the cups on the table")
    const placed = support(q, props.boxes, [img.H, img.W], anchors.length ? anchors[0] : null, anchors.slice(1));
    const member = cos[0].map((c, i) => sig(c) * (allowed && !allowed[i] ? 0 : 1) * (rejected && rejected[i] ? 0 : 1) *
      placed[i]);
    let chosen, presence;
    if (q.group) {
      chosen = member.map((_, i) => i).sort((a, b) => member[b] - member[a]).filter((i) => member[i] >= e.presence_threshold);
      if (!chosen.length) chosen = [argmax(probs)];
      presence = Math.max(...chosen.map((i) => member[i]));
    } else {
      chosen = [argmax(probs)];
      presence = member[chosen[0]];
    }
    for (const row of cos.slice(1)) { // a relation needs its anchor too (each of several): the best other object
      let top = -Infinity;  // for it (TextEngine.rank)
      row.forEach((c, i) => { if (!(allowed && !allowed[i]) && !chosen.includes(i)) top = Math.max(top, c); });
      presence = Math.min(presence, 1 / (1 + Math.exp(-e.presence_gain * (top - e.presence_bias))));
    }
    let background = null;  // the proposal what is excluded names best, when it is not chosen
    for (const row of negatives) {
      const j = argmax(row);
      if (Number.isFinite(row[j]) && !chosen.includes(j) && (row[j] > cos[0][j] || sig(row[j]) >= e.presence_threshold)) {
        background = j;
        break;
      }
    }
    return {q, chosen, presence, background};
  }

  // the locator's click for a phrase (original pixels) and its presence, as TextPrompter.locate_with_presence
  async function locate(phrase, textRow) {
    const m = api.manifest, cand = await candidates(), L = cand.size, S = m.img_size;
    const ratio = [img.W / img.inputW, img.H / img.inputH];
    // a locator with its own presence readout answers presence too: the chosen candidate's (0 without any)
    let xy, presence = m.text.locator.presence ? 0 : null, members = [], groupPresence = 0;
    if (cand.masks.length === 0) {
      xy = [img.inputW / 2 - 0.5, img.inputH / 2 - 0.5];
    } else {
      const n = cand.masks.length, masks = new Float32Array(n * L * L);
      cand.masks.forEach((mk, i) => masks.set(mk, i * L * L));
      const T = textRow.length, W = textRow.words.length / T;
      const wordMask = new Uint8Array(T);
      for (let j = 0; j <= textRow.end; j++) wordMask[j] = 1;
      const out = await run('locator', {
        image_embeddings: img.embedding, masks: f32(masks, [1, n, L, L]), rgb: f32(img.rgbPadded, [1, 3, S, S]),
        text_embedding: f32(textRow.embedding, [1, textRow.embedding.length]), words: f32(textRow.words, [1, T, W]),
        word_mask: new ort.Tensor('bool', wordMask, [1, T]),
      });
      const best = argmax(out.scores.data);
      const [px, py] = deepestPoint(cand.masks[best], L, L);
      const scale = S / L;
      xy = [(px + 0.5) * scale - 0.5, (py + 0.5) * scale - 0.5];
      if (out.presence) {
        // every candidate's presence; those over the threshold, best score first, are a group phrase's members
        const each = Array.from(out.presence.data, (v) => 1 / (1 + Math.exp(-v)));
        presence = each[best];
        const thr = m.text.engine.presence_threshold, s = out.scores.data;
        members = each.map((_, i) => i).sort((a, b) => s[b] - s[a]).filter((i) => each[i] >= thr);
        groupPresence = Math.max(...each);
      }
    }
    return {xy: [(xy[0] + 0.5) * ratio[0] - 0.5, (xy[1] + 0.5) * ratio[1] - 0.5], presence, members, groupPresence};
  }

  // a candidate's click as a proposal's (TextPrompter._regions_as_proposals): its deepest low-res pixel, in
  // original pixels, inside the image
  function candidateClick(i) {
    const cand = img.candidates, L = cand.size, scale = api.manifest.img_size / L;
    const [px, py] = deepestPoint(cand.masks[i], L, L);
    const ratio = [img.W / img.inputW, img.H / img.inputH];
    const x = (px + 0.5) * scale * ratio[0] - 0.5, y = (py + 0.5) * scale * ratio[1] - 0.5;
    return [Math.min(Math.max(x, 0), img.W - 1), Math.min(Math.max(y, 0), img.H - 1)];
  }

  function checkPrompt({text, points, box}) {
    if (!img) throw new UserError('open an image first');
    points = points || [];
    if (!Array.isArray(points)) throw new UserError('points must be a list of [x, y, label]');
    for (const p of points) {
      if (!Array.isArray(p) || p.length < 2 || !p.slice(0, 2).every(Number.isFinite)) throw new UserError('a point is [x, y, label] with numbers');
      const [x, y] = p;
      if (x < 0 || y < 0 || x > img.W - 1 || y > img.H - 1) {
        throw new UserError(`the point (${x}, ${y}) is outside the image (${img.W} x ${img.H} pixels)`);
      }
    }
    if (box) {
      if (!Array.isArray(box) || box.length !== 4 || !box.every(Number.isFinite)) throw new UserError('a box is [x0, y0, x1, y1]');
      if (!(box[0] < box[2] && box[1] < box[3])) throw new UserError('a box needs x0 < x1 and y0 < y1');
    }
    const phrase = text === undefined || text === null ? null : cleanPhrase(text);
    if (phrase !== null && !api.manifest.text) throw new UserError(`this page's model (${api.manifest.model}) takes clicks and a box, not text`);
    if (phrase === null && !points.length && !box) throw new UserError('give a phrase, a click or a box');
    return {phrase, points: points.map(([x, y, l]) => [x, y, l === undefined ? 1 : (l ? 1 : 0)]), box: box || null};
  }

  // a prompt (original pixels) in the decoder's frame, SAM's ONNX convention: points, then the box's corners
  // (labels 2, 3) or a padding point
  function decoderPrompt(points, box) {
    const sx = img.inputW / img.W, sy = img.inputH / img.H;
    const out = points.map(([x, y, l]) => [x * sx, y * sy, l]);
    if (box) out.push([box[0] * sx, box[1] * sy, 2], [box[2] * sx, box[3] * sy, 3]);
    else out.push([0, 0, -1]);
    return out;
  }

  async function segment(prompt = {}) {
    await api.ready;
    const t0 = now();
    const {phrase, points, box} = checkPrompt(prompt);
    const m = api.manifest;
    let pts = points.slice(), promptBox = box, textRow = null, pres = null, read = null;
    if (phrase !== null) {
      // every sentence this phrase needs in one text-tower call: the phrase (a head's input) and the template
      // sentences of its head noun phrase (and anchor) for the ranking
      // (a head with its own text tower: a second call, of that tower)
      const q = parse(phrase), templates = m.text.templates;
      const headGraph = m.graphs.clip_text_head ? 'clip_text_head' : 'clip_text';
      const headHere = m.text.mode === 'head' && headGraph === 'clip_text';
      // with a head, the engine chooses for a phrase relating two objects (TextPrompter.engine_resolves)
      const relational = m.text.mode === 'head' && q.relation !== null;
      // a head whose locator answers presence, asked without a click or box: the engine is not needed
      const locatorAnswers = m.text.mode === 'head' && m.text.locator.presence && !points.length && !box && !relational;
      let ranked = null;
      if (!locatorAnswers) {
        await encodeTexts([...(headHere ? [phrase] : []), ...expand(q.head, templates),
          ...q.relations.flatMap((r) => expand(r[1], templates)), ...q.excluded.flatMap((t) => expand(t, templates))]);
        ranked = await rank(phrase, points, box);
        pres = ranked.presence;
        if (m.text.mode !== 'head' || relational) read = describe(q);  // the engine chooses: say how it read it
      }
      if (m.text.mode === 'head') { // the head's tokens, and its locator's click when the user gave no click or box
        [textRow] = await encodeTexts([phrase], headGraph);
        if (relational) { // the engine's choice among the head's candidates: its box and click, with the tokens
          if (ranked.chosen.length) {
            const props = await proposalSet();
            const asBox = (i) => { const b = props.boxes[i]; return [b[0], b[1], b[2] + 1, b[3] + 1]; };
            if (ranked.q.group) {
              return finish(t0, await groupMask(ranked.chosen.map((i) => [asBox(i), candidateClick(i)]), points,
                textRow.embedding), pres, phrase, points, box, read);
            }
            pts.push([...candidateClick(ranked.chosen[0]), 1]);
            if (ranked.background !== null) pts.push([...candidateClick(ranked.background), 0]);  // what is excluded
            if (!box) promptBox = asBox(ranked.chosen[0]);
          }
        } else if (!points.length && !box) {
          const located = await locate(phrase, textRow);
          if (locatorAnswers && q.group && located.members.length) { // "all the X": the union of its members
            const props = await proposalSet();
            const members = located.members.map((i) => {
              const b = props.boxes[i];
              return [[b[0], b[1], b[2] + 1, b[3] + 1], candidateClick(i)];
            });
            return finish(t0, await groupMask(members, points, textRow.embedding), located.groupPresence, phrase,
              points, box);
          }
          pts = [[...located.xy, 1]];
          if (located.presence !== null) pres = located.presence;
        }
      } else if (ranked.chosen.length) { // the engine's chosen proposal: its box and its click
        const props = img.proposals;
        const asBox = (i) => { const b = props.boxes[i]; return [b[0], b[1], b[2] + 1, b[3] + 1]; };
        if (ranked.q.group) return finish(t0, await groupMask(ranked.chosen.map((i) => [asBox(i), props.points[i]]), points), pres, phrase, points, box, read);
        pts.push([...props.points[ranked.chosen[0]], 1]);
        if (ranked.background !== null) pts.push([...props.points[ranked.background], 0]);  // what is excluded
        if (!box) promptBox = asBox(ranked.chosen[0]);
      }
    }
    // no prompt at all (a phrase on an image without proposals): SAM's answer to an empty prompt, as Python gives
    const empty = !pts.length && !promptBox && !textRow;
    const {low, iou, size} = await decode([empty ? [] : decoderPrompt(pts, promptBox)], textRow ? textRow.embedding : null);
    const best = argmax(iou, 1, 4), area = size * size;
    const logits = await upsample(low.slice(best * area, (best + 1) * area), 1);
    return finish(t0, {mask: threshold(logits), score: iou[best]}, pres, phrase, points, box, read);
  }
  function threshold(logits) {
    const mask = new Uint8Array(img.H * img.W), t = api.manifest.mask_threshold;
    for (let p = 0; p < mask.length; p++) mask[p] = logits[p] > t ? 1 : 0;
    return mask;
  }
  // read: how the engine read the phrase when it chose the object (Query.describe), else null
  function finish(t0, {mask, score}, presence, phrase, points, box, read = null) {
    api.timings.update_ms = now() - t0;
    const found = phrase === null || points.length > 0 || box !== null || presence >= api.manifest.text.engine.presence_threshold;
    return {width: img.W, height: img.H, mask, score, presence, found, read};
  }
  // a group phrase ("all the X"): every member's box and click (with the user's clicks) in one decoder batch, the
  // single-mask output, the union of their masks (TextSamPredictor._predict_group)
  async function groupMask(members, userPoints, textEmbedding = null) {
    const {low, iou, size} = await decode(members.map(([b, c]) => decoderPrompt([...userPoints, [...c, 1]], b)),
      textEmbedding);
    const area = size * size, union = new Float32Array(area).fill(-Infinity);
    members.forEach((_, i) => { for (let p = 0; p < area; p++) union[p] = Math.max(union[p], low[i * 4 * area + p]); });
    const score = members.reduce((s, _, i) => s + iou[i * 4], 0) / members.length;
    return {mask: threshold(await upsample(union, 1)), score};
  }

  api.loadImage = loadImage;
  api.segment = segment;
  api.cocoRle = cocoRle;
  // the ports of Python code, for the tests that compare them with the originals
  api._internal = {tokenize: (s) => tokenize(s, api.manifest.text.context_length), parse, resolve, support, describe, resizePIL,
    proposalPoints: () => (img && img.proposals ? img.proposals.points : null)};

  api.ready = (async () => {
    const response = await fetch('manifest.json');
    if (!response.ok) throw new Error('manifest.json is missing: this folder is not a textsam export');
    api.manifest = await response.json();
    if (api.manifest.format !== 1) throw new Error(`manifest.json has format ${api.manifest.format}; this page reads format 1`);
    ort.env.wasm.wasmPaths = new URL('./', location.href).href;
    ort.env.wasm.proxy = Boolean(api.manifest.worker);
    ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    const names = Object.keys(api.manifest.graphs);
    await Promise.all(names.map(session));
    if (api.manifest.text) await loadTokenizer(api.manifest.text.tokenizer);
    await warmUp();
  })();

  // one small run of each prompt-time graph, so that the first click or phrase does not pay for the sessions'
  // first-run set-up
  async function warmUp() {
    const m = api.manifest, [h, w] = m.embedding_size, L = m.low_res_size[0];
    const c = m.embedding_channels;
    const emb = new ort.Tensor('float32', new Float32Array(c * h * w), [1, c, h, w]);
    const feeds = {image_embeddings: emb, point_coords: f32([0, 0], [1, 1, 2]), point_labels: f32([-1], [1, 1])};
    await run('decoder', feeds);
    await run('upsample', {low_res_masks: f32(new Float32Array(L * L), [1, 1, L, L]), orig_im_size: f32([8, 8], [2])});
    if (m.text) {
      const T = m.text.any_length ? 2 : m.text.context_length, tokens = new BigInt64Array(T);
      tokens[0] = BigInt(tokenizer.sot); tokens[1] = BigInt(tokenizer.eot);
      const out = await run('clip_text', {tokens: new ort.Tensor('int64', tokens, [1, T])});
      if (m.graphs.decoder_text) await run('decoder_text', {...feeds, text_embedding: out.embedding});
    }
  }
})();
