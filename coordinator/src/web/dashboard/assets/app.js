// The saga dashboard. Plain JavaScript, no build step.
//
// Safety rule: every value that comes from a saga (names, payloads, outputs, errors, notes) reaches the
// page only as text — through `h()` below, which creates text nodes — never through innerHTML.
'use strict';

(() => {
  const DASHBOARD_HEADER = { 'X-Requested-With': 'saga-dashboard' };
  const STATES = ['prepared', 'running', 'compensating', 'failed', 'committed', 'compensated', 'aborted'];
  const IN_FLIGHT = ['prepared', 'running', 'compensating', 'failed'];
  const FINAL = ['committed', 'compensated', 'aborted'];
  // States in which something may still happen without an operator: their pictures run to now.
  const MOVING = ['prepared', 'running', 'compensating'];
  const SVG = 'http://www.w3.org/2000/svg';
  const BULK_POLL_MS = 1000; // how often the bulk actions' progress is read while one runs
  const SKIPPED_SHOWN = 50; // the skipped sagas of a bulk action listed at most

  const main = document.getElementById('main');
  let view = null; // the page shown: { refresh(), onChange(change), stop() }
  let stream = null;

  // ---- DOM helpers ---------------------------------------------------------------------------

  /** Creates an element; strings among the children become text nodes (never markup). */
  function h(tag, attrs, ...children) {
    return build(document.createElement(tag), attrs, children);
  }

  /** `h` for the elements of an inline SVG picture. */
  function svg(tag, attrs, ...children) {
    return build(document.createElementNS(SVG, tag), attrs, children);
  }

  function build(el, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      // An SVG element's className is not a string: the attribute works for both kinds.
      if (key === 'class') el.setAttribute('class', value);
      else if (key === 'dataset') Object.assign(el.dataset, value);
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  /** Shows these nodes as the page (null, undefined and false are left out). */
  function show(...nodes) {
    main.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
  }

  function badge(state, extra) {
    return h('span', { class: `badge s-${state}`, ...(extra || {}) }, state);
  }

  function sagaLink(id, text) {
    return h('a', { href: `/sagas/${encodeURIComponent(id)}`, 'data-link': true }, text);
  }

  /** The end of a UUIDv7: its start is a timestamp, much the same for sagas of one minute. */
  function shortId(id) {
    return `…${String(id).slice(-12)}`;
  }

  function json(value) {
    return JSON.stringify(value, null, 2);
  }

  function when(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString();
  }

  /** A time to the millisecond, for the event log and the timeline (attempts are often ms apart). */
  function preciseTime(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    const time = d.toLocaleTimeString(undefined, {
      hour: '2-digit', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3, hour12: false,
    });
    return `${d.toLocaleDateString()} ${time}`;
  }

  function ago(iso) {
    const ms = Date.now() - new Date(iso).getTime();
    if (!(ms >= 0)) return '—';
    const s = Math.floor(ms / 1000);
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${s % 60}s`;
    const hr = Math.floor(m / 60);
    if (hr < 48) return `${hr}h ${m % 60}m`;
    return `${Math.floor(hr / 24)}d`;
  }

  function duration(fromIso, toIso) {
    const ms = new Date(toIso).getTime() - new Date(fromIso).getTime();
    if (!(ms >= 0)) return '—';
    return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
  }

  function flash(message, isError) {
    const el = document.getElementById('flash');
    el.textContent = message;
    el.className = isError ? 'error' : '';
    el.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { el.hidden = true; }, isError ? 15000 : 5000);
  }

  // ---- HTTP ----------------------------------------------------------------------------------

  class Unauthorized extends Error {}

  /** Calls the coordinator; the login cookie goes along, with the header that proves the page sent it. */
  async function call(path, options) {
    const opts = options || {};
    const headers = { Accept: 'application/json', ...DASHBOARD_HEADER };
    if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
    const resp = await fetch(path, {
      method: opts.method || 'GET',
      headers,
      credentials: 'same-origin',
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
    if (resp.status === 401) {
      showLogin();
      throw new Unauthorized('a token is needed');
    }
    const text = await resp.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
    if (!resp.ok) {
      const error = new Error((body && (body.detail || body.title)) || `HTTP ${resp.status}`);
      error.status = resp.status;
      // A 422's broken rules: [{field, message}].
      error.errors = body && Array.isArray(body.errors) ? body.errors : [];
      throw error;
    }
    return body;
  }

  // ---- Live updates --------------------------------------------------------------------------

  function setLive(on) {
    const el = document.getElementById('live');
    el.className = on ? 'live on' : 'live off';
    el.textContent = on ? 'live' : 'offline';
  }

  function startStream() {
    if (stream) return;
    stream = new EventSource('/dashboard/api/stream');
    stream.addEventListener('hello', () => {
      setLive(true);
      // Changes while disconnected were missed: reload what is shown.
      if (view) view.refresh();
    });
    stream.addEventListener('change', (e) => {
      let change = null;
      try { change = JSON.parse(e.data); } catch (_) { return; }
      if (view) view.onChange(change);
    });
    stream.addEventListener('resync', () => { if (view) view.refresh(); });
    stream.onerror = () => setLive(false);
  }

  /** Runs `fn` once after calls stop coming for `ms` (many changes, one reload). */
  function debounce(fn, ms) {
    let timer = null;
    return () => {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  // ---- Login ---------------------------------------------------------------------------------

  function showLogin() {
    if (view) view.stop();
    view = null;
    if (stream) { stream.close(); stream = null; setLive(false); }
    if (document.getElementById('login-form')) return;
    const input = h('input', { type: 'password', id: 'token', autocomplete: 'current-password', required: true });
    const error = h('p', { class: 'error', id: 'login-error' });
    const form = h('form', { id: 'login-form', class: 'panel login' },
      h('h1', {}, 'Log in'),
      h('p', { class: 'muted' }, 'This coordinator needs its API token (SAGA_API_TOKEN).'),
      input, error,
      h('button', { type: 'submit', id: 'login' }, 'Log in'));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      error.textContent = '';
      try {
        await call('/dashboard/login', { method: 'POST', body: { token: input.value } });
        route();
      } catch (err) {
        error.textContent = err instanceof Unauthorized ? 'That is not the token.' : err.message;
      }
    });
    show(form);
    input.focus();
  }

  document.getElementById('logout').addEventListener('click', async () => {
    try { await call('/dashboard/logout', { method: 'POST' }); } catch (_) { /* shown by showLogin */ }
    showLogin();
  });

  // ---- Confirmation ------------------------------------------------------------------------

  /** An API error as lines of text: a 422's broken rules one by one, else its message. */
  function problemLines(err) {
    const rules = (err.errors || []).map((e) => h('div', { class: 'rule' }, e.field ? `${e.field}: ${e.message}` : e.message));
    return rules.length ? rules : [h('div', {}, err.message)];
  }

  /**
   * Asks before an action; resolves to the note (or '') when confirmed, null when cancelled.
   *
   * With `choices` ([{value, label, text, button, withNote}]) the dialog also asks which action;
   * the chosen one's text follows `text` (on a line of its own), its button label replaces `button`. With `submit`
   * ({choice, note} => Promise) the dialog stays open while it runs and shows its error if it
   * fails (a 422's rules one by one); it resolves to what `submit` answered.
   */
  function confirmAction({ title, text, button, withNote, choices, submit, dismiss }) {
    const dialog = document.getElementById('confirm');
    const textEl = document.getElementById('confirm-text');
    const error = document.getElementById('confirm-error');
    document.getElementById('confirm-title').textContent = title;
    error.replaceChildren();
    const choiceLabel = document.getElementById('confirm-action-label');
    const choice = document.getElementById('confirm-action');
    choiceLabel.hidden = !choices;
    choice.replaceChildren(...(choices
      ? [h('option', { value: '' }, 'Choose an action…'), ...choices.map((c) => h('option', { value: c.value }, c.label))]
      : []));
    const noteLabel = document.getElementById('confirm-note-label');
    const note = document.getElementById('confirm-note');
    note.value = '';
    const ok = document.getElementById('confirm-ok');
    const cancel = document.getElementById('confirm-cancel');
    cancel.textContent = dismiss || 'Cancel';
    ok.disabled = false;
    const chosen = () => (choices || []).find((c) => c.value === choice.value);
    const needsNote = () => (choices ? Boolean(chosen() && chosen().withNote) : Boolean(withNote));
    const sync = () => {
      const c = chosen();
      textEl.replaceChildren(text, c ? h('span', { class: 'choice-text' }, c.text) : '');
      ok.textContent = c ? c.button : button;
      noteLabel.hidden = !needsNote();
      error.replaceChildren();
    };
    sync();
    return new Promise((resolve) => {
      let settled = false;
      const done = (value) => {
        if (settled) return;
        settled = true;
        ok.onclick = null;
        cancel.onclick = null;
        choice.onchange = null;
        dialog.onclose = null;
        ok.disabled = false;
        dialog.close();
        resolve(value);
      };
      choice.onchange = sync;
      ok.onclick = async () => {
        if (choices && !chosen()) {
          error.textContent = 'Choose an action.';
          return;
        }
        const value = needsNote() ? note.value.trim() : '';
        if (needsNote() && !value) {
          error.textContent = 'Say what was repaired.';
          return;
        }
        if (!submit) {
          done(value);
          return;
        }
        ok.disabled = true;
        error.replaceChildren();
        try {
          done(await submit({ choice: choice.value, note: value }));
        } catch (err) {
          if (err instanceof Unauthorized) done(null);
          else error.replaceChildren(...problemLines(err));
        } finally {
          ok.disabled = false;
        }
      };
      cancel.onclick = () => done(null);
      dialog.onclose = () => done(null);
      dialog.showModal();
      (choices ? choice : needsNote() ? note : ok).focus();
    });
  }

  async function act(id, action, name) {
    const texts = {
      abort: {
        title: `Abort saga “${name}”?`,
        text: 'No more actions are sent; every step that may have taken effect is compensated.',
        button: 'Abort saga',
      },
      retry: {
        title: `Retry saga “${name}”?`,
        text: 'The compensations that failed are sent again, with a fresh attempt budget. ' +
          'Do this once the participant is repaired.',
        button: 'Retry compensations',
      },
      'retry-now': {
        title: `Send the waiting attempts of “${name}” now?`,
        text: 'Every step waiting out a retry backoff (or a prepared saga\'s next check-back) is sent at ' +
          'once instead of when the backoff ends. Do this once the dependency it waits for has recovered.',
        button: 'Retry now',
      },
      pause: {
        title: `Pause saga “${name}”?`,
        text: 'Nothing more is sent and no timer fires until you resume it. Replies to commands ' +
          'already out are still recorded.',
        button: 'Pause saga',
      },
      resume: {
        title: `Resume saga “${name}”?`,
        text: 'The saga continues where it stood: what became ready is sent now, and each wait ' +
          'continues with the time it had left.',
        button: 'Resume saga',
      },
      commit: {
        title: `Commit saga “${name}”?`,
        text: 'Only when you know the initiator\'s local transaction committed: the saga starts running.',
        button: 'Commit saga',
      },
      ask: {
        title: `Ask the initiator of “${name}” again?`,
        text: 'A new round of check-backs is sent, with a fresh attempt budget.',
        button: 'Ask again',
      },
      resolve: {
        title: `Resolve saga “${name}” by hand?`,
        text: 'The saga is closed without sending anything: compensated (aborted if nothing was ever ' +
          'dispatched). Only do this when the effects were undone, or never happened, by other means.',
        button: 'Mark resolved',
        withNote: true,
      },
    }[action];
    const note = await confirmAction(texts);
    if (note === null) return;
    // "Ask again" is the API's retry of a prepared saga whose check-backs ran out.
    const endpoint = action === 'ask' ? 'retry' : action;
    try {
      const body = action === 'resolve' ? { note } : undefined;
      const saga = await call(`/api/v1/sagas/${encodeURIComponent(id)}/${endpoint}`, { method: 'POST', body });
      flash(`${action}: saga is now ${saga.state}`);
    } catch (err) {
      if (!(err instanceof Unauthorized)) flash(`${action} failed: ${err.message}`, true);
    }
    if (view) view.refresh();
  }

  async function actOnName(name, action) {
    const texts = {
      pause: {
        title: `Pause every “${name}” saga?`,
        text: 'Running ones send nothing more and fire no timer; new ones start paused. Replies to ' +
          'commands already out are still recorded. Until you resume the name.',
        button: 'Pause them all',
      },
      resume: {
        title: `Resume every “${name}” saga?`,
        text: 'The sagas this pause holds continue where they stood (those paused one by one stay ' +
          'paused); new ones run at once again.',
        button: 'Resume them',
      },
    }[action];
    if (await confirmAction(texts) === null) return;
    try {
      await call(`/api/v1/saga-names/${encodeURIComponent(name)}/${action}`, { method: 'POST' });
      flash(`${action}: every ${name} saga`);
    } catch (err) {
      if (!(err instanceof Unauthorized)) flash(`${action} failed: ${err.message}`, true);
    }
    if (view) view.refresh();
  }

  // ---- Bulk actions --------------------------------------------------------------------------

  /** What a bulk action can apply to each saga it matches (the API's `action`), for the dialog. */
  const BULK_ACTIONS = [
    {
      value: 'retry', label: 'Retry compensations', button: 'Retry them all',
      text: 'Retry: each failed saga sends its failed compensations again, with a fresh attempt budget ' +
        '(an undecided two-phase saga asks its initiator again). Do this once the participant is repaired.',
    },
    {
      value: 'abort', label: 'Abort', button: 'Abort them all',
      text: 'Abort: each running or prepared saga sends nothing more and compensates every step that may ' +
        'have taken effect.',
    },
    {
      value: 'resolve', label: 'Resolve with a note', button: 'Resolve them all', withNote: true,
      text: 'Resolve: each failed saga is closed without sending anything: compensated (aborted if ' +
        'nothing was ever dispatched). Only when the effects were undone, or never happened, by other means.',
    },
    {
      value: 'pause', label: 'Pause', button: 'Pause them all',
      text: 'Pause: each saga sends nothing more and fires no timer until it is resumed. Replies to ' +
        'commands already out are still recorded.',
    },
    {
      value: 'resume', label: 'Resume', button: 'Resume them all',
      text: 'Resume: each saga paused on its own continues where it stood (one held by its name\'s pause ' +
        'is skipped: resume the name).',
    },
    {
      value: 'retry-now', label: 'Retry now', button: 'Retry them all now',
      text: 'Retry now: every step waiting out a retry backoff (or a prepared saga\'s next check-back) is ' +
        'sent at once.',
    },
  ];

  /** A bulk action's filter as text: its states (all in-flight ones said so) and its exact name. */
  function describeFilter(filter) {
    const parts = [];
    const states = (filter && filter.state) || [];
    if (states.length === IN_FLIGHT.length && IN_FLIGHT.every((s) => states.includes(s))) parts.push('any in-flight state');
    else if (states.length) parts.push(`state ${states.join(', ')}`);
    if (filter && filter.name) parts.push(`named ${filter.name}`);
    return parts.join(' · ') || '—';
  }

  // ---- Overview ------------------------------------------------------------------------------

  function overviewPage() {
    const params = new URLSearchParams(location.search);
    const filter = { state: params.get('state') || '', name: params.get('name') || '' };
    const cards = h('div', { class: 'cards', id: 'counts' });
    const banner = h('div', { id: 'attention' });
    const pausedNames = h('div', { id: 'paused-names' });
    const chart = h('div', { class: 'panel chart', id: 'throughput' });
    const stateSelect = h('select', { id: 'filter-state' },
      h('option', { value: '' }, 'all in-flight states'),
      IN_FLIGHT.map((s) => h('option', { value: s, selected: s === filter.state }, s)));
    const nameInput = h('input', { id: 'filter-name', type: 'search', placeholder: 'name contains…', value: filter.name });
    const bulkStart = h('button', {
      type: 'button', id: 'bulk-start', class: 'quiet',
      title: 'Apply an action to every saga of the filter, as a background job',
      onclick: () => startBulk(),
    }, 'Apply to all matching…');
    const inFlight = h('tbody', { id: 'in-flight' });
    const finished = h('tbody', { id: 'finished' });
    const bulkBody = h('tbody', { id: 'bulk-actions' });
    let stopped = false;
    let shownInFlight = []; // the in-flight sagas the list shows now
    // A bulk action needs a filter: it never applies to every saga.
    const syncBulkStart = () => { bulkStart.disabled = !(filter.state || filter.name.trim()); };
    syncBulkStart();

    const applyFilter = () => {
      filter.state = stateSelect.value;
      filter.name = nameInput.value;
      const q = new URLSearchParams();
      if (filter.state) q.set('state', filter.state);
      if (filter.name) q.set('name', filter.name);
      history.replaceState(null, '', q.toString() ? `/?${q}` : '/');
      syncBulkStart();
      refresh();
    };
    stateSelect.addEventListener('change', applyFilter);
    nameInput.addEventListener('input', debounce(applyFilter, 250));

    show(
      h('h1', {}, 'Sagas'),
      cards,
      banner,
      pausedNames,
      h('div', { class: 'row' },
        h('div', {}, h('h2', {}, 'Started and finished per minute (last 30 minutes)'), chart),
        h('div', {}, h('h2', {}, 'Legend'), h('div', { class: 'panel muted' },
          'In flight: prepared, running, compensating, failed. ',
          h('b', { class: 'error' }, 'Failed'),
          ' sagas could not be compensated by automation and wait for an operator: open one to retry or resolve it.'))),
      h('h2', {}, 'In flight'),
      h('div', { class: 'filters' }, 'Filter:', stateSelect, nameInput, bulkStart),
      h('table', {},
        h('thead', {}, h('tr', {}, ['Name', 'State', 'Current step', 'Attempts', 'Age', 'Last error', 'Id'].map((t) => h('th', {}, t)))),
        inFlight),
      h('h2', {}, 'Bulk actions'),
      h('table', { class: 'bulk' },
        h('thead', {}, h('tr', {}, ['Action', 'Sagas', 'State', 'Progress', 'Started', ''].map((t) => h('th', {}, t)))),
        bulkBody),
      h('h2', {}, 'Recently finished ', h('a', { href: '/history', 'data-link': true, class: 'more' }, 'search the history →')),
      h('table', {},
        h('thead', {}, h('tr', {}, ['Name', 'State', 'Finished', 'Took', 'Id'].map((t) => h('th', {}, t)))),
        finished));

    function renderCounts(counts) {
      cards.replaceChildren(...STATES.map((s) => {
        const n = counts[s] || 0;
        const filterable = IN_FLIGHT.includes(s);
        const card = h('div', {
          class: `card s-${s}${filterable ? ' filterable' : ''}${s === 'failed' && n > 0 ? ' attention' : ''}`,
          dataset: { state: s },
          title: filterable ? `show ${s} sagas` : null,
        }, h('div', { class: 'n' }, n), h('div', { class: 'label' }, s));
        if (filterable) card.addEventListener('click', () => { stateSelect.value = s; applyFilter(); });
        return card;
      }));
      const failed = counts.failed || 0;
      banner.replaceChildren(failed > 0
        ? h('div', { class: 'banner' }, `${failed} saga${failed === 1 ? '' : 's'} failed and need${failed === 1 ? 's' : ''} an operator. `,
          h('a', { href: '/?state=failed', onclick: (e) => { e.preventDefault(); stateSelect.value = 'failed'; applyFilter(); } }, 'Show them'))
        : '');
    }

    function renderChart(minutes) {
      const width = 600;
      const height = 110;
      const max = Math.max(1, ...minutes.map((m) => Math.max(m.started, m.finished)));
      const slot = width / Math.max(1, minutes.length);
      const bar = Math.max(1, slot / 2 - 1);
      const picture = svg('svg', { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none' },
        minutes.map((m, i) => [['started', '#2f6fde', 0], ['finished', '#1f9d55', bar]].map(([key, colour, offset]) => {
          const value = m[key];
          const hgt = (value / max) * (height - 10);
          return svg('rect', {
            x: i * slot + offset, y: height - hgt, width: bar, height: Math.max(hgt, value > 0 ? 1 : 0), fill: colour,
          }, svg('title', {}, `${new Date(m.minute).toLocaleTimeString()}: ${value} ${key}`));
        })));
      const total = (key) => minutes.reduce((n, m) => n + m[key], 0);
      chart.replaceChildren(picture, h('div', { class: 'legend' },
        h('span', { style: null, class: 'started' }, `started: ${total('started')}`),
        h('span', { class: 'finished' }, `finished: ${total('finished')}`),
        h('span', {}, `peak ${max}/min`)));
    }

    function renderInFlight(items) {
      shownInFlight = items;
      if (!items.length) {
        inFlight.replaceChildren(h('tr', {}, h('td', { class: 'empty', colspan: 7 }, 'No saga in flight.')));
        return;
      }
      inFlight.replaceChildren(...items.map((s) => h('tr', {
        class: s.state === 'failed' ? 'attention' : null,
        dataset: { sagaId: s.id, state: s.state },
      },
      h('td', { class: 'name' }, sagaLink(s.id, s.name)),
      h('td', { class: 'state' }, badge(s.state), s.state === 'failed' ? h('span', { class: 'error' }, ' needs attention') : null),
      h('td', {}, s.current_step || '—'),
      h('td', {}, s.attempts || '—'),
      h('td', { class: 'age', dataset: { since: s.created_at } }, ago(s.created_at)),
      h('td', { class: 'error' }, s.error || ''),
      h('td', { class: 'mono' }, sagaLink(s.id, shortId(s.id))))));
    }

    // Names whose sagas are held: each with since when and a way to let them go.
    function renderPausedNames(items) {
      pausedNames.replaceChildren(...items.map((p) => h('div', { class: 'banner paused-name', dataset: { name: p.name } },
        'Every ', h('b', {}, p.name), ` saga is paused (since ${when(p.paused_at)}): new ones wait, running ones send nothing. `,
        h('button', { type: 'button', class: 'warn', onclick: () => actOnName(p.name, 'resume') }, 'Resume them'))));
    }

    function renderFinished(items) {
      if (!items.length) {
        finished.replaceChildren(h('tr', {}, h('td', { class: 'empty', colspan: 5 }, 'Nothing finished yet.')));
        return;
      }
      finished.replaceChildren(...items.map((s) => h('tr', { dataset: { sagaId: s.id, state: s.state } },
        h('td', { class: 'name' }, sagaLink(s.id, s.name)),
        h('td', { class: 'state' }, badge(s.state)),
        h('td', {}, when(s.updated_at)),
        h('td', {}, duration(s.created_at, s.updated_at)),
        h('td', { class: 'mono' }, sagaLink(s.id, shortId(s.id))))));
    }

    let loading = false;
    let again = false;
    let tookMs = 0;
    async function refresh() {
      if (stopped) return;
      if (loading) { again = true; return; }
      loading = true;
      const began = Date.now();
      try {
        const q = new URLSearchParams();
        if (filter.state) q.set('state', filter.state);
        if (filter.name) q.set('name', filter.name);
        const data = await call(`/dashboard/api/overview?${q}`);
        if (stopped) return;
        document.getElementById('logout').hidden = !data.authentication;
        renderCounts(data.counts);
        renderChart(data.throughput);
        renderInFlight(data.in_flight);
        renderFinished(data.finished);
        renderPausedNames((await call('/api/v1/saga-names/paused')).items || []);
        // Bulk actions started elsewhere show up with the sagas they change.
        if (!bulkTimer) loadBulk();
        startStream();
      } catch (err) {
        if (!(err instanceof Unauthorized)) flash(`Cannot load the overview: ${err.message}`, true);
      } finally {
        tookMs = Date.now() - began;
        loading = false;
        if (again) { again = false; soon(); }
      }
    }

    // Ages move on without a reload.
    const ticker = setInterval(() => {
      for (const cell of inFlight.querySelectorAll('td.age')) cell.textContent = ago(cell.dataset.since);
    }, 5000);
    // Many changes, few reloads: each one runs aggregate queries, so reload at most once a second,
    // and less often when the last reload was slow (a big table): the page spends at most a fifth
    // of the time loading.
    let pending = null;
    let last = 0;
    const soon = () => {
      if (pending) return;
      const gap = Math.max(1000, 5 * tookMs);
      const wait = Math.max(200, gap - (Date.now() - last));
      pending = setTimeout(() => { pending = null; last = Date.now(); refresh(); }, wait);
    };
    // ---- Bulk actions: the recent ones with their progress, polled while one runs.

    let bulkItems = [];
    let bulkTimer = null;
    let bulkLoading = false;
    let bulkAgain = false;
    const skippedShown = new Map(); // bulk action id -> its skipped sagas, shown under its row

    async function loadSkipped(id) {
      const page = await call(`/api/v1/bulk-actions/${encodeURIComponent(id)}/sagas?outcome=skipped&limit=${SKIPPED_SHOWN}`);
      skippedShown.set(id, page);
    }

    async function loadBulk() {
      if (stopped) return;
      if (bulkLoading) { bulkAgain = true; return; }
      clearTimeout(bulkTimer);
      bulkTimer = null;
      bulkLoading = true;
      let running = false;
      try {
        const data = await call('/api/v1/bulk-actions?limit=10');
        if (stopped) return;
        bulkItems = data.items || [];
        running = bulkItems.some((b) => b.state === 'running');
        // The skipped sagas shown of one still running grow with it.
        await Promise.all(bulkItems.filter((b) => b.state === 'running' && skippedShown.has(b.id)).map((b) => loadSkipped(b.id)));
        if (stopped) return;
        renderBulk();
      } catch (err) {
        if (!(err instanceof Unauthorized)) {
          bulkBody.replaceChildren(h('tr', {}, h('td', { class: 'empty error', colspan: 6 }, `Cannot load the bulk actions: ${err.message}`)));
        }
      } finally {
        bulkLoading = false;
        if (bulkAgain) { bulkAgain = false; loadBulk(); }
        else if (running && !stopped && !bulkTimer) bulkTimer = setTimeout(() => { bulkTimer = null; loadBulk(); }, BULK_POLL_MS);
      }
    }

    function renderBulk() {
      if (!bulkItems.length) {
        bulkBody.replaceChildren(h('tr', {}, h('td', { class: 'empty', colspan: 6 },
          'No bulk action yet: filter the list, then “Apply to all matching…”.')));
        return;
      }
      bulkBody.replaceChildren(...bulkItems.flatMap((b) => {
        const done = b.applied + b.unchanged + b.skipped;
        const skipped = skippedShown.get(b.id);
        const row = h('tr', { class: 'bulk-action', dataset: { id: b.id, state: b.state } },
          h('td', {}, h('b', { class: 'bulk-verb' }, b.action), b.note ? h('div', { class: 'muted bulk-note' }, `note: ${b.note}`) : null),
          h('td', { class: 'bulk-filter' }, describeFilter(b.filter)),
          h('td', {}, h('span', { class: `badge bulk-state b-${b.state}` }, b.state)),
          h('td', { class: 'bulk-progress-cell' },
            // Nothing matched is nothing left to do: a full bar.
            h('progress', { class: 'bulk-bar', max: Math.max(1, b.total), value: b.total ? done : 1 }),
            h('span', { class: 'bulk-progress' }, `${done} of ${b.total}`),
            h('div', { class: 'bulk-counts muted' },
              `${b.applied} applied · ${b.unchanged} unchanged · `,
              h('span', { class: b.skipped ? 'error bulk-skipped-count' : 'bulk-skipped-count' }, `${b.skipped} skipped`),
              b.skipped ? h('button', {
                type: 'button', class: 'link bulk-skipped-toggle',
                onclick: () => toggleSkipped(b.id),
              }, skipped ? 'hide' : 'which?') : null,
              b.pending ? ` · ${b.pending} to do` : '')),
          h('td', {}, when(b.created_at),
            b.finished_at ? h('div', { class: 'muted' }, `took ${duration(b.created_at, b.finished_at)}`) : null),
          h('td', {}, b.state === 'running'
            ? h('button', { type: 'button', class: 'danger bulk-cancel', onclick: () => cancelBulk(b) }, 'Cancel')
            : null));
        if (!skipped) return [row];
        const items = skipped.items || [];
        return [row, h('tr', { class: 'bulk-skipped', dataset: { id: b.id } }, h('td', { colspan: 6 },
          h('div', { class: 'muted' }, 'Skipped: the action did not apply to these sagas any more.',
            skipped.next ? ` The first ${items.length}.` : ''),
          h('ul', {}, items.map((it) => h('li', { dataset: { sagaId: it.saga_id } },
            h('span', { class: 'mono' }, sagaLink(it.saga_id, shortId(it.saga_id))), ' ',
            h('span', { class: 'reason' }, it.reason || '—'))))))];
      }));
    }

    async function toggleSkipped(id) {
      if (skippedShown.has(id)) {
        skippedShown.delete(id);
      } else {
        try {
          await loadSkipped(id);
        } catch (err) {
          if (!(err instanceof Unauthorized)) flash(`Cannot list the skipped sagas: ${err.message}`, true);
          return;
        }
      }
      if (!stopped) renderBulk();
    }

    async function startBulk() {
      const name = filter.name.trim();
      // What the list shows: its state, or every in-flight one (an operator's action applies to
      // no finished saga).
      const which = { state: filter.state ? [filter.state] : IN_FLIGHT, ...(name ? { name } : {}) };
      let text = `Every saga ${filter.state ? `in state ${filter.state}` : 'in flight'}` +
        `${name ? ` named exactly “${name}”` : ''}, as it stands now (sagas that match later are left out), ` +
        'one by one in the background; a saga the action no longer applies to is skipped.';
      const others = name ? shownInFlight.filter((s) => s.name !== name).length : 0;
      if (others) {
        text += ` The list also shows ${others} saga${others === 1 ? '' : 's'} whose name only contains “${name}”: ` +
          'they are left out.';
      }
      const created = await confirmAction({
        title: 'Apply an action to every matching saga?',
        text,
        button: 'Apply',
        choices: BULK_ACTIONS,
        submit: ({ choice, note }) => call('/api/v1/bulk-actions', {
          method: 'POST',
          body: { action: choice, filter: which, ...(choice === 'resolve' ? { note } : {}) },
        }),
      });
      if (created) {
        flash(`bulk ${created.action} started on ${created.total} saga${created.total === 1 ? '' : 's'}`);
        bulkItems = [created, ...bulkItems.filter((b) => b.id !== created.id)];
        if (!stopped) renderBulk();
      }
      loadBulk();
    }

    async function cancelBulk(b) {
      const answer = await confirmAction({
        title: `Cancel the bulk ${b.action}?`,
        text: `The sagas it has not reached yet (${b.pending} of ${b.total}) are left as they are; those ` +
          `done keep the ${b.action}. A batch under way finishes.`,
        button: 'Cancel the bulk action',
        dismiss: 'Keep it running',
      });
      if (answer === null) return;
      try {
        await call(`/api/v1/bulk-actions/${encodeURIComponent(b.id)}/cancel`, { method: 'POST' });
        flash(`bulk ${b.action} cancelled`);
      } catch (err) {
        if (!(err instanceof Unauthorized)) flash(`cancel failed: ${err.message}`, true);
      }
      loadBulk();
    }

    refresh();
    return {
      refresh,
      onChange: soon,
      stop() { stopped = true; clearInterval(ticker); clearTimeout(pending); clearTimeout(bulkTimer); },
    };
  }

  // ---- History -------------------------------------------------------------------------------

  /** The list API's text filters the history search offers: [parameter, label, hint]. */
  const SEARCH_TEXTS = [
    ['name', 'Name', 'exact saga name'],
    ['key', 'Key', 'exact key'],
    ['participant', 'Participant', 'a step runs at it'],
    ['step', 'Step', 'a step of this name'],
    ['error', 'Error contains', 'text of a step’s error'],
  ];
  /** Its time filters: [parameter, label]; RFC 3339 in UTC for the API, local time in the form. */
  const SEARCH_TIMES = [
    ['created_after', 'Created after'],
    ['created_before', 'Created before'],
    ['finished_after', 'Finished after'],
    ['finished_before', 'Finished before'],
  ];

  /** A datetime-local input's value (the browser's local time) as UTC RFC 3339, or '' if none. */
  function localToUtc(value) {
    const d = value ? new Date(value) : null;
    return d && !isNaN(d) ? d.toISOString() : '';
  }

  /** A time of the query string as a datetime-local input shows it (local time, to the second). */
  function utcToLocal(iso) {
    const d = iso ? new Date(iso) : null;
    if (!d || isNaN(d)) return '';
    const two = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}` +
      `T${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  }

  /**
   * Searches every saga still kept, finished or in flight. The page's query string is the list
   * API's query, so a search can be bookmarked or shared and Back returns to the previous one: the
   * form only writes a new address, and the page shows whatever its address asks for.
   */
  function historyPage() {
    const params = new URLSearchParams(location.search);
    let stopped = false;
    let shown = new Set(); // the sagas the results show, which a change reloads
    let older = null; // the answer's cursors: `next` (older sagas) and `prev` (newer ones)
    let newer = null;

    const fieldErrors = new Map(); // parameter -> where its 422 message goes
    const errorSlot = (field) => {
      const el = h('div', { class: 'error field-error', dataset: { field } });
      fieldErrors.set(field, el);
      return el;
    };
    const input = (field, attrs) => h('input', { name: field, id: `history-${field}`, ...attrs });
    const stateChoices = STATES.map((s) => h('label', { class: 'state-choice' },
      h('input', { type: 'checkbox', name: 'state', value: s, checked: params.getAll('state').includes(s) }), badge(s)));
    const formError = h('div', { class: 'error', id: 'history-problem', role: 'alert' });
    const form = h('form', { id: 'history-form', class: 'panel search', novalidate: true },
      h('fieldset', { class: 'states' }, h('legend', {}, 'State'), stateChoices, errorSlot('state')),
      h('div', { class: 'search-grid' },
        SEARCH_TEXTS.map(([field, label, hint]) => h('label', { class: 'search-field' }, label,
          input(field, { type: 'search', placeholder: hint, value: params.get(field) || '' }), errorSlot(field))),
        SEARCH_TIMES.map(([field, label]) => h('label', { class: 'search-field' }, label,
          input(field, { type: 'datetime-local', step: 1, value: utcToLocal(params.get(field)) }), errorSlot(field))),
        h('label', { class: 'search-field' }, 'Per page',
          input('limit', { type: 'number', min: 1, max: 500, placeholder: '50', value: params.get('limit') || '' }), errorSlot('limit'))),
      formError,
      h('div', { class: 'buttons' },
        h('button', { type: 'submit', id: 'history-search' }, 'Search'),
        h('button', { type: 'button', class: 'quiet', id: 'history-clear', onclick: () => go(new URLSearchParams()) }, 'Clear')));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      go(formQuery());
    });
    const summary = h('span', { class: 'muted', id: 'history-summary' }, 'Searching…');
    const newerButton = h('button', { type: 'button', class: 'quiet', id: 'history-newer', disabled: true, onclick: () => go(pageQuery('after', newer)) }, '← Newer');
    const olderButton = h('button', { type: 'button', class: 'quiet', id: 'history-older', disabled: true, onclick: () => go(pageQuery('before', older)) }, 'Older →');
    const results = h('tbody', { id: 'history-results' });
    show(
      h('h1', {}, 'History'),
      h('p', { class: 'muted' }, 'Every saga the coordinator still keeps, finished or in flight, newest first. ' +
        'The search is kept in the address: bookmark or share it.'),
      form,
      h('div', { class: 'filters pager' }, summary, newerButton, olderButton),
      h('table', {},
        h('thead', {}, h('tr', {}, ['Id', 'Name', 'Key', 'State', 'Created', 'Finished'].map((t) => h('th', {}, t)))),
        results));

    /** The form's filters as the list API's query: empty fields left out, times in UTC. */
    function formQuery() {
      const q = new URLSearchParams();
      for (const box of form.querySelectorAll('input[name="state"]:checked')) q.append('state', box.value);
      for (const [field] of SEARCH_TEXTS) {
        const value = form.elements[field].value.trim();
        if (value) q.set(field, value);
      }
      for (const [field] of SEARCH_TIMES) {
        const value = localToUtc(form.elements[field].value);
        if (value) q.set(field, value);
      }
      const limit = form.elements.limit.value.trim();
      if (limit) q.set('limit', limit);
      return q;
    }

    /** The search shown, one page older (`before`) or newer (`after`) than this one. */
    function pageQuery(direction, cursor) {
      const q = new URLSearchParams(params);
      q.delete('before');
      q.delete('after');
      q.set(direction, cursor);
      return q;
    }

    /** Shows search `q` as a new entry of the browser's history. */
    function go(q) {
      const query = q.toString();
      history.pushState(null, '', query ? `/history?${query}` : '/history');
      route();
    }

    function resultRow(s) {
      const finishedAt = s.finished_at || (FINAL.includes(s.state) ? s.updated_at : null);
      return h('tr', { class: s.state === 'failed' ? 'attention' : null, dataset: { sagaId: s.id, state: s.state } },
        h('td', { class: 'mono' }, sagaLink(s.id, shortId(s.id))),
        h('td', { class: 'name' }, sagaLink(s.id, s.name)),
        h('td', { class: 'mono key' }, s.key || '—'),
        h('td', { class: 'state' }, badge(s.state)),
        h('td', {}, when(s.created_at)),
        h('td', {}, finishedAt
          ? [when(finishedAt), h('div', { class: 'muted' }, `took ${duration(s.created_at, finishedAt)}`)]
          : h('span', { class: 'muted' }, `in flight, updated ${when(s.updated_at)}`)));
    }

    function renderResults(page) {
      const items = page.items || [];
      shown = new Set(items.map((s) => s.id));
      [older, newer] = [page.next || null, page.prev || null];
      olderButton.disabled = !older;
      newerButton.disabled = !newer;
      const paged = params.has('before') || params.has('after');
      summary.textContent = items.length
        ? `${items.length} saga${items.length === 1 ? '' : 's'}${older || paged ? ' on this page' : ''}, newest first`
        : '';
      results.replaceChildren(...(items.length ? items.map(resultRow) : [h('tr', {}, h('td', { class: 'empty', colspan: 6 },
        paged ? 'No more sagas this way.' : 'No saga matches these filters.'))]));
    }

    function clearProblem() {
      for (const slot of fieldErrors.values()) slot.replaceChildren();
      formError.replaceChildren();
    }

    /** A refused search: a 422's rules beside the fields they name (the others under the form). */
    function renderProblem(err) {
      clearProblem();
      const rules = err.errors || [];
      const unplaced = rules.filter((rule) => {
        const slot = fieldErrors.get(rule.field);
        if (slot) slot.append(h('div', {}, rule.message));
        return !slot;
      });
      formError.replaceChildren(...(!rules.length ? [h('div', {}, `Cannot search: ${err.message}`)]
        : unplaced.length ? problemLines({ errors: unplaced }) : []));
      shown = new Set();
      olderButton.disabled = true;
      newerButton.disabled = true;
      summary.textContent = '';
      results.replaceChildren(h('tr', {}, h('td', { class: 'empty error', colspan: 6 },
        err.status === 422 ? 'The search was refused: see the form.' : 'The search failed.')));
    }

    async function refresh() {
      if (stopped) return;
      try {
        // The page's query string is the API's query, whatever put it there.
        const page = await call(`/api/v1/sagas?${params}`);
        if (stopped) return;
        clearProblem();
        renderResults(page);
        startStream();
      } catch (err) {
        if (!(err instanceof Unauthorized) && !stopped) renderProblem(err);
      }
    }

    const soon = debounce(refresh, 300);
    refresh();
    return {
      refresh,
      // A saga shown that changes (one in flight finishing) is shown as it is now.
      onChange(change) { if (shown.has(change.id)) soon(); },
      stop() { stopped = true; },
    };
  }

  // ---- Attempts over time (the saga page's picture) ------------------------------------------

  /** How the picture names what ended a bar, for its legend and tooltips. */
  const BAR_OUTCOMES = {
    succeeded: 'succeeded',
    failed: 'failed',
    'timed-out': 'timed out',
    'dead-lettered': 'dead-lettered',
    compensated: 'compensated',
    running: 'no answer yet',
    abandoned: 'abandoned',
  };
  /** The picture's proportions, in SVG units (it scales to the panel's width). */
  const PICTURE = { width: 1000, label: 160, lane: 24, axis: 22, bar: 14, wait: 4, ticks: 8 };

  /** A reply's outcome as the colour of the attempt it ends. */
  function replyOutcome(kind, outcome) {
    if (outcome === 'success') return kind === 'compensation' ? 'compensated' : 'succeeded';
    // A check-back answered `committed` or `aborted` decided the saga; `pending` did not.
    if (kind === 'check') return outcome === 'pending' ? 'failed' : 'succeeded';
    return 'failed'; // `failure`, or `retry`: this attempt did not do it
  }

  /**
   * The saga's attempts and retry waits as bars, read from its event log: an attempt runs from its
   * `dispatched` to the `reply`, `timed_out` or `dead_lettered` that ends it; a retry wait from its
   * `retry_scheduled` to the next `dispatched` of that step and kind. Compensating abandons the
   * actions still out and their waits (the machine no longer awaits them), a final state anything
   * left. What is still open runs to `end` (a wait to its planned end, if later). Pauses hold every
   * step at once: they are bands, not bars.
   */
  function attemptBars(events, end) {
    const bars = [];
    const pauses = [];
    const open = new Map(); // `${lane}/${kind}` (+ '/wait') -> its bar, until it ends
    const finish = (key, at, outcome, note) => {
      const bar = open.get(key);
      if (!bar) return;
      open.delete(key);
      Object.assign(bar, { to: at, outcome, note: note || bar.note });
    };
    const abandon = (at, which) => {
      for (const [key, bar] of [...open]) if (which(bar)) finish(key, at, 'abandoned');
    };
    for (const e of events) {
      const at = Date.parse(e.at);
      const kind = (e.detail && e.detail.kind) || null;
      // Check-backs have no step; no step can have this name (names begin with a letter or digit).
      const lane = e.step || '(check-backs)';
      const key = `${lane}/${kind}`;
      const begin = (wait, extra) => {
        const bar = { lane, kind, wait, attempt: e.attempt, from: at, to: null, outcome: 'running', ...extra };
        bars.push(bar);
        open.set(wait ? `${key}/wait` : key, bar);
      };
      switch (e.type) {
        case 'dispatched':
          finish(`${key}/wait`, at, 'waited');
          begin(false, {});
          break;
        case 'reply':
          // `failed` stands for both `failure` and `retry`: the note tells them apart.
          finish(key, at, replyOutcome(kind, e.detail.outcome), e.detail.outcome === 'success' ? null
            : `answered ${e.detail.outcome}${e.detail.error ? `: ${e.detail.error}` : ''}`);
          break;
        case 'timed_out':
          finish(key, at, 'timed-out');
          break;
        case 'dead_lettered':
          finish(key, at, 'dead-lettered');
          break;
        case 'retry_scheduled':
          begin(true, { planned: at + (e.detail.backoff_ms || 0), note: e.detail.error });
          break;
        case 'compensating':
          abandon(at, (bar) => bar.kind === 'action');
          break;
        case 'committed': case 'compensated': case 'aborted': case 'failed': case 'resolved':
          abandon(at, () => true);
          break;
        case 'paused':
          pauses.push({ from: at, to: null });
          break;
        case 'resumed':
          for (const p of pauses) if (p.to === null) p.to = at;
          break;
        default:
          break;
      }
    }
    for (const bar of open.values()) {
      bar.open = true;
      bar.to = bar.wait ? Math.max(end, bar.planned) : end;
    }
    for (const p of pauses) if (p.to === null) p.to = end;
    return { bars, pauses };
  }

  /** The lanes top to bottom: check-backs first (they come first), then the steps in their order. */
  function pictureLanes(steps, bars) {
    const lanes = bars.some((b) => b.kind === 'check') ? ['(check-backs)'] : [];
    for (const name of [...steps.map((s) => s.name), ...bars.map((b) => b.lane)]) {
      if (!lanes.includes(name)) lanes.push(name);
    }
    return lanes;
  }

  /** A span of time as an axis label: ms below a second, then s, then min. */
  function spanLabel(ms) {
    if (ms < 1000) return `${+ms.toFixed(1)} ms`;
    if (ms < 60000) return `${+(ms / 1000).toFixed(2)} s`;
    const s = Math.round(ms / 1000);
    return s % 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s / 60} min`;
  }

  /** A round tick interval (1, 2 or 5 times a power of ten ms) giving at most `count` ticks. */
  function tickInterval(span, count) {
    const raw = Math.max(span / count, 1);
    const power = 10 ** Math.floor(Math.log10(raw));
    return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw);
  }

  function barTitle(bar) {
    const what = bar.wait
      ? `waiting to retry the ${bar.kind} after attempt ${bar.attempt}${bar.outcome === 'abandoned' ? ', abandoned' : ''}`
      : `${bar.kind} attempt ${bar.attempt}: ${BAR_OUTCOMES[bar.outcome]}`;
    const until = bar.open ? (bar.wait ? `${preciseTime(bar.to)} (planned)` : 'now') : preciseTime(bar.to);
    return `${bar.lane} · ${what}${bar.note ? ` (${bar.note})` : ''}\n` +
      `${preciseTime(bar.from)} → ${until}, ${duration(bar.from, bar.to)}`;
  }

  /**
   * The saga's attempts on a shared time axis: a lane per step, a bar per action or compensation
   * attempt coloured by what ended it, a thin bar per retry wait, a band per pause.
   */
  function attemptsPicture(doc, events) {
    if (!events.some((e) => e.type === 'dispatched')) return h('p', { class: 'muted' }, 'Nothing was sent yet.');
    const start = Date.parse(events[0].at);
    const last = Date.parse(events[events.length - 1].at);
    const end = MOVING.includes(doc.state) ? Math.max(Date.now(), last) : last;
    const { bars, pauses } = attemptBars(events, end);
    const lanes = pictureLanes(doc.steps || [], bars);
    const span = Math.max(1, ...bars.map((b) => b.to - start), end - start);
    const plot = PICTURE.width - PICTURE.label - 36; // room for the last tick's label
    const x = (t) => PICTURE.label + (Math.max(0, t - start) / span) * plot;
    const top = (i) => PICTURE.axis + i * PICTURE.lane;
    const height = top(lanes.length) + 4;
    const step = tickInterval(span, PICTURE.ticks);
    const ticks = [];
    for (let t = 0; t <= span; t += step) ticks.push(t);
    const picture = svg('svg', {
      viewBox: `0 0 ${PICTURE.width} ${height}`, role: 'img', id: 'saga-gantt-svg',
      'aria-label': `attempts of ${lanes.length} step${lanes.length === 1 ? '' : 's'} over ${spanLabel(span)}`,
    },
    lanes.map((lane, i) => [
      svg('rect', { class: `lane${i % 2 ? ' odd' : ''}`, x: 0, y: top(i), width: PICTURE.width, height: PICTURE.lane }),
      svg('text', { class: 'lane-label', x: PICTURE.label - 8, y: top(i) + PICTURE.lane / 2 + 4, 'text-anchor': 'end' },
        lane.length > 22 ? [`${lane.slice(0, 21)}…`, svg('title', {}, lane)] : lane),
    ]),
    ticks.map((t, i) => [
      svg('line', { class: 'grid', x1: x(start + t), x2: x(start + t), y1: PICTURE.axis - 4, y2: height - 4 }),
      svg('text', { class: 'tick', x: x(start + t), y: PICTURE.axis - 8, 'text-anchor': i === 0 ? 'start' : 'middle' }, spanLabel(t)),
    ]),
    pauses.map((p) => svg('rect', {
      class: 'paused', x: x(p.from), y: PICTURE.axis, width: Math.max(2, x(p.to) - x(p.from)), height: height - PICTURE.axis - 4,
    }, svg('title', {}, `paused\n${preciseTime(p.from)} → ${p.to === end ? 'now' : preciseTime(p.to)}`))),
    bars.map((bar) => {
      const thick = bar.wait ? PICTURE.wait : PICTURE.bar;
      return svg('rect', {
        class: bar.wait ? 'bar wait' : `bar o-${bar.outcome}`,
        dataset: { step: bar.lane, kind: bar.kind, attempt: bar.attempt, outcome: bar.wait ? 'wait' : bar.outcome },
        x: x(bar.from), y: top(lanes.indexOf(bar.lane)) + (PICTURE.lane - thick) / 2,
        width: Math.max(2, x(bar.to) - x(bar.from)), height: thick, rx: 2,
      }, svg('title', {}, barTitle(bar)));
    }));
    const used = new Set(bars.filter((b) => !b.wait).map((b) => b.outcome));
    return [picture, h('div', { class: 'legend' },
      Object.entries(BAR_OUTCOMES).filter(([o]) => used.has(o)).map(([o, text]) => h('span', { class: `o-${o}` }, text)),
      bars.some((b) => b.wait) ? h('span', { class: 'wait' }, 'retry wait') : null,
      pauses.length ? h('span', { class: 'paused' }, 'paused') : null),
    h('div', { class: 'muted legend-note' }, 'A step’s compensation attempts follow its actions on its lane. Hover a bar for its exact times.')];
  }

  // ---- Saga page -----------------------------------------------------------------------------

  /** Groups steps by dependency depth: every step comes after all steps of earlier groups it needs. */
  function dependencyLevels(steps) {
    const index = new Map(steps.map((s, i) => [s.name, i]));
    const level = new Array(steps.length).fill(-1);
    const depth = (i, seen) => {
      if (level[i] >= 0) return level[i];
      if (seen.has(i)) return 0;
      seen.add(i);
      const after = steps[i].after || [];
      level[i] = after.length ? 1 + Math.max(...after.map((n) => depth(index.get(n) ?? 0, seen))) : 0;
      return level[i];
    };
    steps.forEach((_, i) => depth(i, new Set()));
    const groups = [];
    steps.forEach((s, i) => { (groups[level[i]] = groups[level[i]] || []).push(s); });
    return groups.filter(Boolean);
  }

  function sagaPage(id) {
    let stopped = false;
    let saga = null;

    async function refresh() {
      if (stopped) return;
      try {
        const base = `/api/v1/sagas/${encodeURIComponent(id)}`;
        const [doc, events, stored] = await Promise.all([
          call(base),
          call(`${base}/events`),
          call(`/dashboard/api/sagas/${encodeURIComponent(id)}/stored`),
        ]);
        if (stopped) return;
        saga = doc;
        render(doc, events.items || [], stored.definition, { trace_id: stored.trace_id, url: stored.trace_url });
        startStream();
      } catch (err) {
        if (err instanceof Unauthorized) return;
        show(h('h1', {}, 'Saga'), h('p', { class: 'error' }, err.message),
          h('p', {}, h('a', { href: '/', 'data-link': true }, 'Back to the overview')));
      }
    }

    function render(doc, events, definition, trace) {
      const payloads = new Map((definition.steps || []).map((s) => [s.name, s.payload]));
      const actions = [];
      if (doc.state === 'running' || doc.state === 'prepared') {
        actions.push(h('button', { id: 'action-abort', class: 'danger', type: 'button', onclick: () => act(doc.id, 'abort', doc.name) }, 'Abort'));
      }
      // A two-phase saga whose check-backs ran out never dispatched anything: it is still undecided.
      const undecided = doc.mode === 'prepare' && (doc.steps || []).every((st) => st.attempts === 0);
      if (doc.state === 'failed' && undecided) {
        actions.push(h('button', { id: 'action-ask', class: 'warn', type: 'button', onclick: () => act(doc.id, 'ask', doc.name) }, 'Ask the initiator again'));
        actions.push(h('button', { id: 'action-commit', class: 'quiet', type: 'button', onclick: () => act(doc.id, 'commit', doc.name) }, 'Commit'));
        actions.push(h('button', { id: 'action-abort', class: 'danger', type: 'button', onclick: () => act(doc.id, 'abort', doc.name) }, 'Abort'));
      } else if (doc.state === 'failed') {
        actions.push(h('button', { id: 'action-retry', class: 'warn', type: 'button', onclick: () => act(doc.id, 'retry', doc.name) }, 'Retry compensations'));
      }
      if (['running', 'compensating', 'prepared'].includes(doc.state) && doc.paused_by !== 'name') {
        actions.push(h('button', { id: 'action-pause-name', class: 'quiet', type: 'button', onclick: () => actOnName(doc.name, 'pause') }, `Pause every ${doc.name} saga`));
      }
      if (['running', 'compensating', 'prepared'].includes(doc.state) && doc.paused_by === 'name') {
        actions.push(h('button', { id: 'action-resume-name', class: 'warn', type: 'button', onclick: () => actOnName(doc.name, 'resume') }, `Resume every ${doc.name} saga`));
      } else if (['running', 'compensating', 'prepared'].includes(doc.state)) {
        actions.push(doc.paused_at
          ? h('button', { id: 'action-resume', class: 'warn', type: 'button', onclick: () => act(doc.id, 'resume', doc.name) }, 'Resume')
          : h('button', { id: 'action-pause', class: 'quiet', type: 'button', onclick: () => act(doc.id, 'pause', doc.name) }, 'Pause'));
      }
      if (!doc.paused_at && ((doc.steps || []).some((st) => st.retry_at) || doc.state === 'prepared')) {
        actions.push(h('button', { id: 'action-retry-now', class: 'quiet', type: 'button', onclick: () => act(doc.id, 'retry-now', doc.name) }, 'Retry now'));
      }
      if (doc.state === 'failed') {
        actions.push(h('button', { id: 'action-resolve', class: 'quiet', type: 'button', onclick: () => act(doc.id, 'resolve', doc.name) }, 'Resolve with a note'));
      }
      const check = doc.check_back;
      const checkTarget = check ? (check.participant ? `participant ${check.participant}` : check.url) : '';
      const levels = dependencyLevels(doc.steps || []);
      show(
        h('p', {}, h('a', { href: '/', 'data-link': true }, '← Overview')),
        h('h1', { id: 'saga-name' }, doc.name),
        h('div', { class: 'meta' },
          h('span', {}, 'state ', badge(doc.state, { id: 'saga-state' })),
          doc.paused_at ? h('span', { class: 'paused-flag', id: 'saga-paused' },
            doc.paused_by === 'name' ? `paused with every ${doc.name} saga since ${when(doc.paused_at)}` : `paused since ${when(doc.paused_at)}`) : null,
          h('span', { class: 'mono', id: 'saga-id' }, doc.id),
          doc.key ? h('span', {}, 'key ', h('code', {}, doc.key)) : null,
          h('span', {}, `created ${when(doc.created_at)}`),
          h('span', {}, `updated ${when(doc.updated_at)}`),
          doc.deadline ? h('span', {}, `deadline ${when(doc.deadline)}`) : null,
          // The saga's trace, linked to the tracing UI when SAGA_TRACE_URL_TEMPLATE is set.
          trace && trace.trace_id ? h('span', {}, 'trace ', trace.url
            ? h('a', { id: 'saga-trace', class: 'mono', href: trace.url, target: '_blank', rel: 'noopener noreferrer' }, trace.trace_id)
            : h('code', { id: 'saga-trace' }, trace.trace_id)) : null,
          check ? h('span', { id: 'saga-check-back' },
            `check-back ${checkTarget}: ${check.attempts} of ${check.max_attempts} sent`,
            check.next_at ? `, next ${when(check.next_at)}` : '') : null),
        doc.state === 'failed' && undecided
          ? h('div', { class: 'banner', id: 'saga-attention' },
            'The initiator never answered whether its local transaction committed. Ask it again, commit or abort the saga if you know, or resolve it (it ends aborted).')
          : doc.state === 'failed'
            ? h('div', { class: 'banner', id: 'saga-attention' },
              'Automation could not compensate this saga. Repair the participant and retry, or undo its effects by hand and resolve it with a note.')
            : null,
        actions.length ? h('div', { class: 'actions' }, actions) : null,
        h('h2', {}, 'Dependency order'),
        h('div', { class: 'panel order', id: 'saga-order' }, levels.map((group, i) => [
          i > 0 ? h('span', { class: 'arrow' }, '→') : null,
          h('span', { class: 'level' }, group.map((s) => badge(s.state, { title: s.state }))
            .map((b, j) => { b.textContent = group[j].name; return b; })),
        ])),
        h('h2', {}, 'Steps'),
        h('table', { id: 'steps' },
          h('thead', {}, h('tr', {}, ['Step', 'State', 'Participant', 'Action / compensation', 'Attempts', 'After', 'Last error', 'Output', 'Payload'].map((t) => h('th', {}, t)))),
          h('tbody', {}, (doc.steps || []).map((s) => h('tr', {
            class: ['failed', 'compensation_failed'].includes(s.state) ? 'attention' : null,
            dataset: { step: s.name, state: s.state },
          },
          h('td', {}, s.name),
          h('td', { class: 'state' }, badge(s.state)),
          h('td', {}, s.participant),
          h('td', { class: 'mono' }, s.action, h('br'), s.compensation || '—'),
          h('td', {}, `${s.attempts}`, s.compensation_attempts ? ` / undo ${s.compensation_attempts}` : '',
            s.retry_at ? h('div', { class: 'muted retry-at' }, `next ${when(s.retry_at)}`) : null),
          h('td', {}, (s.after || []).join(', ') || '—'),
          h('td', { class: 'error' }, s.error || ''),
          h('td', {}, s.output === null || s.output === undefined ? '—' : h('pre', {}, json(s.output))),
          h('td', {}, payloads.get(s.name) === null || payloads.get(s.name) === undefined ? '—' : h('pre', {}, json(payloads.get(s.name)))))))),
        h('h2', {}, 'Saga payload'),
        h('pre', { id: 'saga-payload' }, json(doc.payload)),
        h('h2', {}, 'Attempts over time'),
        h('div', { class: 'panel gantt', id: 'saga-gantt' }, attemptsPicture(doc, events)),
        h('h2', {}, `Event log (${events.length})`),
        h('ol', { class: 'timeline', id: 'timeline' }, events.map((e) => h('li', { dataset: { type: e.type } },
          h('span', { class: 'when', title: e.at }, preciseTime(e.at)),
          h('span', { class: 'what' }, e.type),
          e.step ? h('span', {}, ` · step ${e.step}`) : null,
          e.attempt ? h('span', {}, ` · attempt ${e.attempt}`) : null,
          e.detail && Object.keys(e.detail).length ? h('pre', {}, json(e.detail)) : null))));
    }

    const soon = debounce(refresh, 100);
    refresh();
    return {
      refresh,
      onChange(change) { if (change.id === id || (saga && change.id === saga.id)) soon(); },
      stop() { stopped = true; },
    };
  }

  // ---- Dead letters --------------------------------------------------------------------------

  function deadLettersPage() {
    let stopped = false;
    const body = h('tbody', { id: 'dead-letters' });
    const summary = h('p', { class: 'muted', id: 'dead-letters-summary' }, 'Loading…');
    show(
      h('h1', {}, 'Dead letters'),
      h('p', { class: 'muted' }, 'Messages RabbitMQ dead-lettered into the namespace’s dead-letters queue, with the reason it recorded. ' +
        'Browsing leaves them in the queue.'),
      h('div', { class: 'filters' }, summary, h('button', { type: 'button', class: 'quiet', id: 'dead-letters-refresh', onclick: () => refresh() }, 'Refresh')),
      h('table', {},
        h('thead', {}, h('tr', {}, ['Reason', 'Died in queue', 'Type', 'Routing key', 'Times', 'When', 'Message id', 'Body'].map((t) => h('th', {}, t)))),
        body));

    async function refresh() {
      try {
        const data = await call('/dashboard/api/dead-letters');
        if (stopped) return;
        summary.textContent = `${data.total} message${data.total === 1 ? '' : 's'} in the queue` +
          (data.total > data.items.length ? ` (showing the first ${data.items.length})` : '');
        body.replaceChildren(...(data.items.length ? data.items.map((d) => h('tr', { dataset: { reason: d.reason || '' } },
          h('td', { class: 'error reason' }, d.reason || '—'),
          h('td', { class: 'mono' }, d.queue || '—'),
          h('td', {}, d.type || '—'),
          h('td', { class: 'mono' }, d.routing_key),
          h('td', {}, d.count ?? '—'),
          h('td', {}, when(d.died_at)),
          h('td', { class: 'mono' }, d.message_id || '—'),
          h('td', {}, h('pre', {}, d.body))))
          : [h('tr', {}, h('td', { class: 'empty', colspan: 8 }, 'The dead-letters queue is empty.'))]));
        startStream();
      } catch (err) {
        if (!(err instanceof Unauthorized)) summary.textContent = `Cannot browse the dead letters: ${err.message}`;
      }
    }

    refresh();
    // Dead letters are not saga changes; browsing the queue is done on request only.
    return { refresh, onChange() {}, stop() { stopped = true; } };
  }

  // ---- Routing -------------------------------------------------------------------------------

  function route() {
    if (view) view.stop();
    const path = location.pathname;
    const saga = path.match(/^\/sagas\/([^/]+)$/);
    let current = 'overview';
    if (saga) {
      current = '';
      view = sagaPage(decodeURIComponent(saga[1]));
    } else if (path === '/history') {
      current = 'history';
      view = historyPage();
    } else if (path === '/dead-letters') {
      current = 'dead-letters';
      view = deadLettersPage();
    } else {
      view = overviewPage();
    }
    for (const a of document.querySelectorAll('header nav a')) {
      a.classList.toggle('current', a.dataset.nav === current);
    }
  }

  // In-page navigation: links marked data-link change the view without loading the page again.
  document.addEventListener('click', (e) => {
    const a = e.target.closest && e.target.closest('a[data-link]');
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    history.pushState(null, '', a.getAttribute('href'));
    route();
    window.scrollTo(0, 0);
  });
  window.addEventListener('popstate', route);

  route();
})();
