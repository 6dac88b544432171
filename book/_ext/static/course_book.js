// Display equations wider than the text column (on a phone) are scaled down until they fit,
// with its equation number beside it, instead of hiding behind a horizontal scroll bar. Below
// MIN_SCALE the maths would be too small to read: it keeps its size and scrolls.
(() => {
  const MIN_SCALE = 0.6;

  function fitDisplayMaths() {
    for (const container of document.querySelectorAll("mjx-container[display='true']")) {
      const maths = container.querySelector("mjx-math");
      if (!maths) continue;
      container.style.fontSize = "";
      const room = container.clientWidth - 2;  // the theme sets the number beside it
      const needed = maths.getBoundingClientRect().width;
      if (needed > room && room > 0) {
        const scale = Math.max(MIN_SCALE, room / needed);
        container.style.fontSize = `${Math.floor(scale * 100)}%`;
        container.dataset.fitScale = scale.toFixed(2);
      }
    }
  }

  window.addEventListener("load", () => {
    if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
      window.MathJax.startup.promise.then(fitDisplayMaths);
      window.addEventListener("resize", fitDisplayMaths);
    }
  });
})();
