/* MathJax 2 -> 3 bridge for saved ipywidgets (loaded on every page of the book).
 *
 * The widget HTML manager (@jupyter-widgets/html-manager 1.x, which renders the widgets saved in
 * the notebooks) typesets widget labels through the MathJax 2 API,
 * MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]). The book loads MathJax 3, which has no
 * Hub, so every labelled widget threw "Cannot read properties of undefined (reading 'Queue')".
 * This routes such calls to MathJax 3's typesetPromise, once MathJax has started.
 */
(function () {
  "use strict";
  function install() {
    var mj = window.MathJax;
    if (!mj || mj.Hub || typeof mj.version !== "string" || mj.version.charAt(0) !== "3") {
      return;
    }
    mj.Hub = {
      Queue: function () {
        var jobs = Array.prototype.slice.call(arguments);
        var ready = (mj.startup && mj.startup.promise) || Promise.resolve();
        ready.then(function () {
          jobs.forEach(function (job) {
            var element = Array.isArray(job) ? job[2] : null;
            if (element && mj.typesetPromise) {
              mj.typesetPromise([element]).catch(function (err) {
                console.warn("MathJax could not typeset a widget label:", err);
              });
            }
          });
        });
      }
    };
  }
  // MathJax 3 is loaded with "defer": it has replaced its configuration object by the real
  // MathJax object before DOMContentLoaded, and widgets are rendered after that.
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", install);
  } else {
    install();
  }
})();
