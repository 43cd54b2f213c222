(function () {
  var tip = document.getElementById('tip');
  var panel = document.getElementById('panel-body');
  var pinned = null;
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function row(table, key, value) {
    var tr = el('tr');
    tr.appendChild(el('td', null, key));
    var td = el('td');
    if (value instanceof Node) { td.appendChild(value); } else { td.textContent = value; }
    tr.appendChild(td);
    table.appendChild(tr);
  }
  function visible(s) {
    return s.split('\n').join('\u21b5').split('\t').join('\u21e5').split(' ').join('\u2423');
  }
  function details(t, full) {
    var d = t.dataset;
    var box = el('div');
    var table = el('table', 'kv');
    row(table, 'token', el('span', 'toktext', visible(d.tok) || '\u2205'));
    row(table, 'text / pos', d.doc + ' / ' + d.pos + (full ? '  (id ' + d.id + ')' : ''));
    row(table, 'k_hat', d.k + '  (k = ' + d.kint + ')');
    row(table, 'L0', d.l0);
    row(table, 'recon err', d.err + '  (rel ' + d.rel + ')');
    if (d.loss) { row(table, 'next-token loss', d.loss); }
    if (full && d.spl) { row(table, 'loss, SAE spliced', d.spl); }
    if (full) { row(table, 'class', d.cls); }
    if (d.excl) { row(table, 'special token', 'SAE not spliced here; not counted'); }
    box.appendChild(table);
    var pairs = d.top ? d.top.split(' ') : [];
    var shown = full ? pairs : pairs.slice(0, 5);
    box.appendChild(el('div', 'hint', pairs.length ? 'top latents (index, activation)' : 'no active latents'));
    var maxv = 0;
    pairs.forEach(function (p) { maxv = Math.max(maxv, parseFloat(p.split(':')[1])); });
    shown.forEach(function (p) {
      var parts = p.split(':');
      var line = el('div', 'lat');
      line.appendChild(el('span', null, '#' + parts[0]));
      line.appendChild(el('span', null, parts[1]));
      var bar = el('div', 'b');
      bar.style.width = (maxv > 0 ? 100 * parseFloat(parts[1]) / maxv : 0) + '%';
      line.appendChild(bar);
      box.appendChild(line);
    });
    if (!full && pairs.length > shown.length) {
      box.appendChild(el('div', 'hint', '+' + (pairs.length - shown.length) + ' more: click to pin'));
    }
    return box;
  }
  function place(ev) {
    var pad = 14, w = tip.offsetWidth, h = tip.offsetHeight;
    var x = ev.clientX + pad, y = ev.clientY + pad;
    if (x + w > window.innerWidth) { x = Math.max(0, ev.clientX - w - pad); }
    if (y + h > window.innerHeight) { y = Math.max(0, ev.clientY - h - pad); }
    tip.style.left = x + 'px';
    tip.style.top = y + 'px';
  }
  function pin(t) {
    if (pinned) { pinned.classList.remove('pinned'); }
    pinned = t;
    t.classList.add('pinned');
    panel.replaceChildren(details(t, true));
  }
  document.addEventListener('mouseover', function (ev) {
    var t = ev.target.closest ? ev.target.closest('.tok') : null;
    if (!t) { tip.hidden = true; return; }
    tip.replaceChildren(details(t, false));
    tip.hidden = false;
    place(ev);
  });
  document.addEventListener('mousemove', function (ev) { if (!tip.hidden) { place(ev); } });
  document.addEventListener('click', function (ev) {
    var t = ev.target.closest ? ev.target.closest('.tok') : null;
    if (t) { pin(t); }
  });
  document.addEventListener('keydown', function (ev) {
    var t = document.activeElement;
    if ((ev.key === 'Enter' || ev.key === ' ') && t && t.classList && t.classList.contains('tok')) {
      ev.preventDefault();
      pin(t);
    }
  });
  document.querySelectorAll('.tok').forEach(function (t) { t.removeAttribute('title'); });
})();
