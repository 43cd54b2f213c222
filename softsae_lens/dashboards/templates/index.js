(function () {
  var table = document.getElementById('latents');
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var search = document.getElementById('search');
  var shown = document.getElementById('shown');
  function key(row, col, numeric) {
    var v = row.cells[col].getAttribute('data-v');
    if (v === null) { v = row.cells[col].textContent; }
    if (!numeric) { return v; }
    var f = parseFloat(v);
    return isNaN(f) ? -Infinity : f;
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    th.addEventListener('click', function () {
      var numeric = th.getAttribute('data-type') === 'num';
      var desc = !th.classList.contains('sorted-desc');
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
        c.classList.remove('sorted-asc', 'sorted-desc');
      });
      th.classList.add(desc ? 'sorted-desc' : 'sorted-asc');
      rows.sort(function (a, b) {
        var x = key(a, col, numeric), y = key(b, col, numeric);
        var r = x < y ? -1 : (x > y ? 1 : 0);
        return desc ? -r : r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  function filter() {
    var q = search.value.trim().toLowerCase();
    var n = 0;
    rows.forEach(function (r) {
      var hay = r.getAttribute('data-search') || '';
      // digits: that latent; anything else: the text of its top tokens
      var ok = !q || (/^\d+$/.test(q) ? r.getAttribute('data-latent') === q : hay.indexOf(q) >= 0);
      r.hidden = !ok;
      if (ok) { n += 1; }
    });
    shown.textContent = String(n);
  }
  search.addEventListener('input', filter);
  // index.html#q=TEXT&sort=KEY[-asc] opens with a search and a sorted column (links, tests).
  var params = {};
  location.hash.replace(/^#/, '').split('&').forEach(function (p) {
    var kv = p.split('=');
    if (kv[0]) { params[kv[0]] = decodeURIComponent(kv[1] || ''); }
  });
  if (params.q) { search.value = params.q; }
  if (params.sort) {
    var asc = /-asc$/.test(params.sort);
    var th = table.querySelector('th[data-key="' + params.sort.replace(/-asc$/, '') + '"]');
    if (th) { th.click(); if (asc) { th.click(); } }
  }
  filter();
})();
