"use strict";
// The operators' console: every call is the admin API with the operator's bearer token, which comes
// from the URL fragment (#token=..., never sent to a server) or the token field, and is kept in
// sessionStorage (gone when the tab closes). Paths are relative, so the page works under /api/ too.
(() => {
  const TOKEN_KEY = "shop.ops.token";
  const COMPENSATION = /^(void_payment|release_stock|cancel_order|cancel_requested|start_refund|refund_payment|return_stock|refund_order)$/;
  const $ = (selector) => document.querySelector(selector);
  let ordersNextToken = null;
  let selectedOrder = null;

  function takeTokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const token = params.get("token");
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      // Out of the address bar and history: the token must not be copied or bookmarked along.
      history.replaceState(null, "", location.pathname);
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function say(text, ok) {
    const message = $("#message");
    message.textContent = text;
    message.className = ok ? "ok" : "";
  }

  async function api(path, options = {}) {
    const current = token();
    if (!current) {
      throw new Error("no token: open the console URL printed by make run, or paste an admin token");
    }
    const { contentType, ...init } = options;
    const response = await fetch(new URL(path, document.baseURI), {
      ...init,
      headers: {
        Authorization: `Bearer ${current}`,
        Accept: "application/json",
        ...(contentType ? { "Content-Type": contentType } : {}),
      },
      cache: "no-store",
      credentials: "omit",
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = body && (body.detail || body.title);
      const error = new Error(`${response.status} ${detail || response.statusText} (${path.split("?")[0]})`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function money(value) {
    return value ? `${(value.amount / 100).toFixed(2)} ${value.currency}` : "";
  }

  function utcInput(value) {
    // datetime-local has no zone: the console speaks UTC, as the stored timestamps do.
    return value ? new Date(`${value}Z`).toISOString() : "";
  }

  // ------------------------------------------------------------------ orders
  function orderQuery() {
    const form = new FormData($("#order-filters"));
    const query = new URLSearchParams({ limit: "25" });
    for (const name of ["status", "reason", "customer"]) {
      const value = String(form.get(name) || "").trim();
      if (value) query.set(name, value);
    }
    for (const name of ["since", "until"]) {
      const value = utcInput(String(form.get(name) || ""));
      if (value) query.set(name, value);
    }
    return query;
  }

  // Only the newest listing renders: the page's first load (every order) can answer after the
  // operator's filter did, and must not paint the unfiltered list over the filtered one.
  let ordersRequest = 0;

  async function loadOrders(append) {
    const request = ++ordersRequest;
    const query = orderQuery();
    if (append && ordersNextToken) query.set("next_token", ordersNextToken);
    const page = await api(`admin/orders?${query}`);
    if (request !== ordersRequest) return;
    const body = $("#orders tbody");
    if (!append) body.replaceChildren();
    for (const order of page.items) {
      const row = document.createElement("tr");
      row.dataset.orderId = order.order_id;
      if (order.order_id === selectedOrder) row.classList.add("selected");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "link";
      open.textContent = order.order_id;
      open.addEventListener("click", () => showTimeline(order.order_id).catch(fail));
      cell(row, "").appendChild(open);
      cell(row, order.customer_id);
      cell(row, order.status, `status-${order.status}`);
      cell(row, order.failure_reason);
      cell(row, money(order.total));
      cell(row, order.created_at);
      body.appendChild(row);
    }
    ordersNextToken = page.next_token;
    $("#orders-more").hidden = !ordersNextToken;
  }

  // ------------------------------------------------------------------ timeline
  function duration(milliseconds) {
    if (!Number.isFinite(milliseconds)) return "";
    if (milliseconds < 1000) return `+${milliseconds} ms`;
    if (milliseconds < 60000) return `+${(milliseconds / 1000).toFixed(1)} s`;
    return `+${Math.floor(milliseconds / 60000)} min ${Math.round((milliseconds % 60000) / 1000)} s`;
  }

  // Only the newest request renders: a refresh that started before the operator picked another
  // order must not paint the old one over it when its answer comes back last.
  // The timeline is aria-busy while any of its requests is out.
  let timelineRequest = 0;
  let timelineLoads = 0;

  async function showTimeline(orderId) {
    selectedOrder = orderId;
    const request = ++timelineRequest;
    const list = $("#timeline");
    list.setAttribute("aria-busy", String(++timelineLoads > 0));
    let order;
    try {
      order = await api(`orders/${encodeURIComponent(orderId)}`);
    } finally {
      list.setAttribute("aria-busy", String(--timelineLoads > 0));
    }
    if (request !== timelineRequest) return;
    for (const row of document.querySelectorAll("#orders tbody tr")) {
      row.classList.toggle("selected", row.dataset.orderId === orderId);
    }
    $("#timeline-order").textContent = `${order.order_id} · ${order.status}`;
    list.replaceChildren();
    let previous = null;
    for (const entry of order.history) {
      const at = Date.parse(entry.at);
      const item = document.createElement("li");
      item.dataset.step = entry.step;
      if (COMPENSATION.test(entry.step)) item.classList.add("compensation");
      if (entry.status === "FAILED") item.classList.add("failed");
      for (const [text, className] of [
        [entry.step, "step-name"],
        [entry.status, "step-status"],
        [entry.at, "step-at"],
        [previous === null ? "start" : duration(at - previous), "duration"],
      ]) {
        const span = document.createElement("span");
        span.className = className;
        span.textContent = text;
        item.appendChild(span);
      }
      list.appendChild(item);
      previous = at;
    }
  }

  // ------------------------------------------------------------------ dead letters
  async function loadDeadLetters() {
    const body = $("#dead-letters tbody");
    const rows = [];
    let next = null;
    do {
      const query = new URLSearchParams({ limit: "100" });
      if (next) query.set("next_token", next);
      const page = await api(`admin/dead-letters?${query}`);
      for (const letter of page.items.filter((item) => item.status !== "RESOLVED")) {
        const row = document.createElement("tr");
        row.dataset.orderId = letter.order_id;
        cell(row, letter.order_id);
        cell(row, letter.status, `state-${letter.status}`);
        cell(row, letter.failed_step);
        cell(row, letter.resume);
        cell(row, letter.error);
        const action = cell(row, "");
        if (letter.status === "OPEN") {
          const redrive = document.createElement("button");
          redrive.type = "button";
          redrive.className = "redrive";
          redrive.textContent = "Redrive";
          redrive.addEventListener("click", () => redriveLetter(letter.order_id, redrive).catch(fail));
          action.appendChild(redrive);
        }
        rows.push(row);
      }
      next = page.next_token;
    } while (next);
    body.replaceChildren(...rows);
    if (rows.some((row) => row.querySelector(".state-REDRIVING"))) {
      // A redrive runs the saga again; look again until it settles.
      setTimeout(() => loadDeadLetters().catch(fail), 1000);
    }
  }

  async function redriveLetter(orderId, button) {
    button.disabled = true;
    await api(`admin/dead-letters/${encodeURIComponent(orderId)}/redrive`, { method: "POST" });
    say(`Redrive of ${orderId} started.`, true);
    await loadDeadLetters();
  }

  // ------------------------------------------------------------------ the event pipeline
  // Every OPEN item of a letter listing (dead letters, set-aside records, stock discrepancies), all pages.
  async function openItems(path) {
    const items = [];
    let next = null;
    do {
      const query = new URLSearchParams({ limit: "100" });
      if (next) query.set("next_token", next);
      const page = await api(`${path}?${query}`);
      items.push(...page.items.filter((item) => item.status === "OPEN"));
      next = page.next_token;
    } while (next);
    return items;
  }

  // A record that will never be published (kept without its images, or junk written behind the
  // shop's back) is dismissed with the operator's reason, which the API keeps with who dismissed it.
  function dismissForm(recordId) {
    const form = document.createElement("form");
    form.className = "dismiss";
    const reason = document.createElement("input");
    reason.name = "reason";
    reason.required = true;
    reason.maxLength = 500;
    reason.placeholder = "why it will never be published";
    reason.setAttribute("aria-label", `Reason to dismiss ${recordId}`);
    const dismiss = document.createElement("button");
    dismiss.type = "submit";
    dismiss.textContent = "Dismiss";
    form.append(reason, dismiss);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      dismissRecord(recordId, reason.value.trim(), dismiss).catch((error) => {
        dismiss.disabled = false;
        fail(error);
      });
    });
    return form;
  }

  async function dismissRecord(recordId, reason, button) {
    if (!reason) {
      say("Say why the record will never be published before dismissing it.");
      return;
    }
    button.disabled = true;
    await api(`admin/unreadable-records/${encodeURIComponent(recordId)}/dismiss`, {
      method: "POST",
      body: JSON.stringify({ reason }),
      contentType: "application/json",
    });
    say(`Record ${recordId} dismissed.`, true);
    await loadEventPipeline();
  }

  async function loadEventPipeline() {
    const [failures, records, discrepancies] = await Promise.all([
      api("admin/consumer-failures"),
      openItems("admin/unreadable-records"),
      openItems("admin/stock-discrepancies"),
    ]);
    const summary = $("#consumer-failures");
    const total = failures.waiting + failures.in_hand;
    summary.textContent = total
      ? `Events the consumers failed on: ${failures.waiting} waiting for the next redrive, ` +
        `${failures.in_hand} being handed back or failed again (each is handed back every quarter of an hour).`
      : "Events the consumers failed on: none.";
    summary.classList.toggle("waiting", total > 0);
    $("#unreadable-records tbody").replaceChildren(
      ...records.map((record) => {
        const row = document.createElement("tr");
        row.dataset.recordId = record.record_id;
        cell(row, record.record_id);
        cell(row, Object.entries(record.keys).map(([name, value]) => `${name}=${value}`).join(", "));
        // The message's first line (a ValidationError's count of errors); the whole of it on hover.
        cell(row, `${record.error}: ${record.detail.split("\n")[0]}`).title = record.detail;
        cell(row, record.attempts);
        cell(row, record.set_aside_at);
        cell(row, record.last_attempt_at);
        cell(row, "").appendChild(dismissForm(record.record_id));
        return row;
      }),
    );
    $("#stock-discrepancies tbody").replaceChildren(
      ...discrepancies.map((letter) => {
        const row = document.createElement("tr");
        row.dataset.sku = letter.sku;
        cell(row, letter.sku);
        cell(row, letter.kinds.join(", "), "state-OPEN");
        cell(row, letter.detail);
        cell(row, letter.runs_seen);
        cell(row, letter.first_seen_at);
        cell(row, letter.last_seen_at);
        return row;
      }),
    );
  }

  // ------------------------------------------------------------------ breakers, stock, reconciliation
  async function loadBreakers() {
    const breakers = await api("admin/circuit-breakers");
    const body = $("#breakers tbody");
    body.replaceChildren();
    for (const breaker of breakers.items) {
      const row = document.createElement("tr");
      cell(row, breaker.name);
      cell(row, breaker.state, `state-${breaker.state}`);
      cell(row, breaker.calls_in_window);
      cell(row, breaker.failures_in_window);
      cell(row, `${breaker.failure_rate_percent}%`);
      body.appendChild(row);
    }
  }

  async function loadStock() {
    const rows = [];
    let next = null;
    let threshold = null;
    do {
      const query = new URLSearchParams({ limit: "100" });
      if (next) query.set("next_token", next);
      const page = await api(`admin/stock?${query}`);
      threshold = page.low_stock_threshold;
      for (const level of page.items) {
        const row = document.createElement("tr");
        row.dataset.sku = level.sku;
        if (level.low_stock) row.classList.add("low");
        cell(row, level.sku);
        cell(row, level.name);
        cell(row, level.active ? "yes" : "no");
        cell(row, level.available);
        rows.push(row);
      }
      next = page.next_token;
    } while (next);
    rows.sort((a, b) => a.dataset.sku.localeCompare(b.dataset.sku));
    $("#stock tbody").replaceChildren(...rows);
    $("#stock-threshold").textContent = `(low at ${threshold} or fewer)`;
  }

  async function loadReconciliation() {
    const target = $("#reconciliation");
    target.replaceChildren();
    let report;
    try {
      report = await api("admin/reconciliation");
    } catch (error) {
      if (error.status !== 404) throw error;
      target.textContent = "The reconciliation has not run yet.";
      return;
    }
    const facts = document.createElement("dl");
    const checked = Object.entries(report.checked).map(([name, count]) => `${count} ${name.replace(/_/g, " ")}`);
    for (const [name, value] of [
      ["Started", report.started_at],
      ["Finished", report.finished_at],
      ["Settled before", report.settled_before],
      ["Checked", checked.join(", ")],
      ["Discrepancies", String(report.discrepancies.length + report.omitted)],
    ]) {
      const term = document.createElement("dt");
      term.textContent = name;
      const detail = document.createElement("dd");
      detail.textContent = value;
      facts.append(term, detail);
    }
    target.appendChild(facts);
    if (report.discrepancies.length) {
      const table = document.createElement("table");
      const head = document.createElement("tr");
      for (const name of ["Kind", "Order / SKU", "What disagrees", "Action"]) {
        const th = document.createElement("th");
        th.textContent = name;
        head.appendChild(th);
      }
      table.appendChild(head);
      for (const found of report.discrepancies) {
        const row = document.createElement("tr");
        cell(row, found.kind);
        cell(row, found.order_id || found.sku);
        cell(row, found.detail);
        cell(row, found.action);
        table.appendChild(row);
      }
      target.appendChild(table);
    }
  }

  // ------------------------------------------------------------------ wiring
  function fail(error) {
    say(error.message || String(error), false);
  }

  async function refreshAll() {
    const results = await Promise.allSettled([
      loadOrders(false),
      loadDeadLetters(),
      loadBreakers(),
      loadStock(),
      loadEventPipeline(),
      loadReconciliation(),
    ]);
    const failed = results.find((result) => result.status === "rejected");
    if (failed) fail(failed.reason);
    else say(`Updated ${new Date().toISOString()}`, true);
    if (selectedOrder) await showTimeline(selectedOrder).catch(fail);
  }

  takeTokenFromFragment();
  window.addEventListener("hashchange", () => {
    takeTokenFromFragment();
    refreshAll();
  });
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("#token").value = "";
    refreshAll();
  });
  $("#refresh").addEventListener("click", () => refreshAll());
  $("#order-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadOrders(false).then(() => say("Orders filtered.", true), fail);
  });
  $("#orders-more").addEventListener("click", () => loadOrders(true).catch(fail));
  refreshAll();
})();
