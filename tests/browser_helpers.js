// Page-side helpers for tests/test_browser.py, installed as an init script before JupyterLab loads.
// They read JupyterLab's own state through `window.jupyterapp` (exposed by the test server's
// --LabApp.expose_app_in_browser=True): the notebook panel, its session context and its cell models.
window.__course = {
  // The notebook panel showing `path` in the main area, or null while it is not open yet.
  panel(path) {
    const app = window.jupyterapp;
    if (!app || !app.shell) return null;
    for (const w of app.shell.widgets('main')) {
      if (w.context && w.context.path === path && w.content && w.sessionContext) return w;
    }
    return null;
  },

  // True once the document is loaded and a kernel is attached, connected and idle. (The toolbar's
  // indicator says "idle" before any kernel is attached, so it cannot be used for this.)
  kernelReady(path) {
    const w = this.panel(path);
    if (!w || !w.context.isReady || !w.sessionContext.isReady) return false;
    const k = w.sessionContext.session && w.sessionContext.session.kernel;
    return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
  },

  kernelStatus(path) {
    const w = this.panel(path);
    const k = w && w.sessionContext.session && w.sessionContext.session.kernel;
    return k ? `${k.status}/${k.connectionStatus}` : 'no kernel';
  },

  codeCells(w) {
    return w.content.widgets.map((c, i) => [c, i]).filter(([c]) => c.model.type === 'code');
  },

  // Where "Run All Cells" is: which cells still wait ([*]), which have not run, and whether an error stopped it.
  runState(path) {
    const w = this.panel(path);
    const pending = [], notRun = [];
    let errors = 0;
    for (const [c, i] of this.codeCells(w)) {
      const outs = c.model.outputs;
      for (let j = 0; j < outs.length; j++) if (outs.get(j).type === 'error') errors++;
      if (c.promptNode && c.promptNode.textContent.includes('*')) pending.push(i);
      else if (c.model.sharedModel.getSource().trim() && c.model.executionCount === null) notRun.push(i);
    }
    const k = w.sessionContext.session && w.sessionContext.session.kernel;
    const idle = !!k && k.status === 'idle';
    // Done when the kernel is idle, nothing is queued, and every cell ran (or an error stopped the run).
    const done = idle && pending.length === 0 && (notRun.length === 0 || errors > 0);
    return { done, pending, notRun, errors, kernel: this.kernelStatus(path) };
  },

  // Every error output: in a cell's own outputs (nbformat "error"), and inside ipywidgets Output
  // widgets (where interact() shows what its function raised), found through the widget models.
  async errors(path) {
    const w = this.panel(path);
    const found = [];
    const widgetMime = 'application/vnd.jupyter.widget-view+json';
    for (const [c, i] of this.codeCells(w)) {
      const outs = c.model.outputs;
      for (let j = 0; j < outs.length; j++) {
        const o = outs.get(j).toJSON();
        if (o.output_type === 'error') found.push({ cell: i, where: 'cell output', ename: o.ename, evalue: o.evalue });
      }
      const seen = new Set();
      const walk = (m) => {
        if (!m || typeof m.get !== 'function' || seen.has(m)) return;
        seen.add(m);
        if (m.get('_model_name') === 'OutputModel') {
          for (const o of m.get('outputs') || []) {
            if (o.output_type === 'error') found.push({ cell: i, where: 'widget output', ename: o.ename, evalue: o.evalue });
          }
        }
        for (const child of m.get('children') || []) walk(child);
      };
      const manager = await this.widgetManager(c);
      if (manager) {
        for (let j = 0; j < outs.length; j++) {
          const d = outs.get(j).data[widgetMime];
          if (d && d.model_id && manager.has_model(d.model_id)) walk(await manager.get_model(d.model_id));
        }
      }
      // A second, textual net for widget outputs: a Python traceback shown on stderr.
      for (const e of c.outputArea.node.querySelectorAll('.widget-output [data-mime-type="application/vnd.jupyter.stderr"]')) {
        if (e.textContent.includes('Traceback (most recent call last)') && !found.some((f) => f.cell === i)) {
          const last = e.textContent.trim().split('\n').pop();
          found.push({ cell: i, where: 'widget output (traceback text)', ename: '', evalue: last });
        }
      }
    }
    return found;
  },

  // For each code cell: how many image outputs the model holds, and how many <img> have loaded.
  images(path) {
    const w = this.panel(path);
    const res = {};
    for (const [c, i] of this.codeCells(w)) {
      const imgs = Array.from(c.outputArea.node.querySelectorAll('.jp-OutputArea-output img'));
      res[i] = {
        loaded: imgs.filter((im) => im.complete && im.naturalWidth > 0).length,
        total: imgs.length,
        widths: imgs.map((im) => Math.round(im.getBoundingClientRect().width)),
      };
    }
    return res;
  },

  // The ipywidgets manager behind a cell's widget outputs (null if it has none). Its renderer keeps
  // it in `_manager`, a promise delegate: not public API, so everything using it has a fallback.
  async widgetManager(c) {
    for (const child of c.outputArea.widgets) {
      for (const r of child.widgets || []) {
        if (r.mimeType === 'application/vnd.jupyter.widget-view+json' && r._manager && r._manager.promise) {
          return await r._manager.promise;
        }
      }
    }
    return null;
  },

  // Cells whose outputs hold ipywidgets views, and whether each view rendered. A widget that was
  // closed on purpose (e.g. a tqdm bar with leave=False) is no longer expected to show.
  async widgets(path) {
    const w = this.panel(path);
    const res = [];
    const widgetMime = 'application/vnd.jupyter.widget-view+json';
    for (const [c, i] of this.codeCells(w)) {
      const ids = [];
      for (let j = 0; j < c.model.outputs.length; j++) {
        const d = c.model.outputs.get(j).data[widgetMime];
        if (d) ids.push(d.model_id);
      }
      if (!ids.length) continue;
      const manager = await this.widgetManager(c);
      const expected = manager ? ids.filter((id) => manager.has_model(id)).length : ids.length;
      const nodes = Array.from(c.outputArea.node.querySelectorAll('.jp-OutputArea-output'))
        .filter((n) => !n.closest('.widget-output'));
      const rendered = nodes.filter((n) => n.querySelector('.lm-Widget.jupyter-widgets')).length;
      const broken = nodes.map((n) => n.textContent).filter((t) => t.includes('Error displaying widget'));
      const sliders = Array.from(c.outputArea.node.querySelectorAll('.widget-slider')).map((s) => {
        const label = s.querySelector('.widget-label');
        const handle = s.querySelector('.noUi-handle');
        return {
          label: label ? label.textContent.trim() : '',
          visible: s.getBoundingClientRect().width > 0,
          value: handle ? handle.getAttribute('aria-valuenow') : null,
          max: handle ? handle.getAttribute('aria-valuemax') : null,
        };
      });
      res.push({ cell: i, expected, rendered, broken, sliders, hasOutputWidget: !!c.outputArea.node.querySelector('.widget-output') });
    }
    return res;
  },

  // What a slider changes: the text and pictures of the cell's output area, sliders left out
  // (their readouts always change). Markup is left out too: it changes when nothing visible does.
  snapshot(path, cell) {
    const c = this.panel(path).content.widgets[cell];
    const node = c.outputArea.node.cloneNode(true);
    node.querySelectorAll('.widget-slider').forEach((e) => e.remove());
    const pictures = Array.from(node.querySelectorAll('img, svg')).map((e) => e.getAttribute('src') || e.outerHTML);
    return JSON.stringify([node.textContent, pictures]);
  },

  // Focus the keyboard handle of the first slider of a cell; returns its value and range.
  focusSlider(path, cell) {
    const c = this.panel(path).content.widgets[cell];
    const handle = c.outputArea.node.querySelector('.widget-slider .noUi-handle');
    handle.scrollIntoView({ block: 'center' });
    handle.focus();
    return {
      focused: document.activeElement === handle,
      value: handle.getAttribute('aria-valuenow'),
      min: handle.getAttribute('aria-valuemin'),
      max: handle.getAttribute('aria-valuemax'),
      label: (c.outputArea.node.querySelector('.widget-slider .widget-label') || {}).textContent,
    };
  },

  sliderValue(path, cell) {
    const c = this.panel(path).content.widgets[cell];
    return c.outputArea.node.querySelector('.widget-slider .noUi-handle').getAttribute('aria-valuenow');
  },

  // Where the notebook's scrolling area starts and how tall its content is (every cell is in the DOM:
  // the test server turns windowing off). Scrolls back to the top, where a learner starts reading.
  contentHeight(path) {
    const w = this.panel(path);
    const scroller = w.content.node.querySelector('.jp-WindowedPanel-outer') || w.content.node;
    scroller.scrollTop = 0;
    return { top: Math.round(scroller.getBoundingClientRect().top), height: scroller.scrollHeight,
             visible: scroller.clientHeight };
  },

  // Tag every cell's node with its index (data-course-cell="i"), so that the test can click into a cell
  // with a Playwright locator, as a person would. Returns the number of cells.
  markCells(path) {
    const w = this.panel(path);
    w.content.widgets.forEach((c, i) => { c.node.dataset.courseCell = String(i); });
    return w.content.widgets.length;
  },

  // The visible text of a cell's outputs ('' for a markdown cell).
  outputText(path, cell) {
    const c = this.panel(path).content.widgets[cell];
    return c.outputArea ? c.outputArea.node.textContent : '';
  },

  async shutdown(path) {
    const w = this.panel(path);
    if (w) await w.sessionContext.shutdown();
  },
};
