// The run page's enhancements: each gallery shows one grid at a time with a slider, and a clicked image opens
// enlarged (← and → step through its gallery there). Without this script every grid stays listed.
(() => {
  "use strict";
  document.documentElement.classList.add("js");
  const galleries = new Map();

  function setUpGallery(gallery) {
    const frames = Array.from(gallery.querySelectorAll(".frame"));
    const slider = gallery.querySelector("input[type=range]");
    const output = gallery.querySelector("output");
    const chips = Array.from(gallery.querySelectorAll(".steps a"));
    let current = 0;
    const show = (index) => {
      current = Math.max(0, Math.min(frames.length - 1, index));
      frames.forEach((frame, i) => { frame.hidden = i !== current; });
      chips.forEach((chip, i) => chip.classList.toggle("current", i === current));
      slider.value = String(current);
      output.textContent = frames[current].querySelector(".frame-title").textContent;
      gallery.dataset.shown = frames[current].dataset.key;
    };
    slider.addEventListener("input", () => show(Number(slider.value)));
    gallery.querySelector(".controls").hidden = false;
    show(Number(slider.value));
    const state = { show, frames, step: (by) => { show(current + by); return frames[current]; } };
    frames.forEach((frame) => galleries.set(frame, state));
  }

  function setUpLightbox(box) {
    const image = new Image();
    const caption = box.querySelector("figcaption");
    let gallery = null;
    const open = (source) => {
      if (!image.isConnected) caption.before(image);
      image.src = source.currentSrc || source.src;
      image.className = source.classList.contains("pixelated") ? "pixelated" : "";
      caption.textContent = source.alt;
      if (!box.open) box.showModal();
    };
    document.addEventListener("click", (event) => {
      const source = event.target.closest("img.zoom");
      if (!source || box.contains(source)) return;
      event.preventDefault();
      gallery = galleries.get(source.closest(".frame")) || null;
      open(source);
    });
    box.addEventListener("click", () => box.close());
    box.addEventListener("keydown", (event) => {
      const by = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
      if (!gallery || !by) return;
      event.preventDefault();
      open(gallery.step(by).querySelector("img"));
    });
  }

  document.querySelectorAll(".gallery").forEach(setUpGallery);
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[href^='#']");
    const target = link && document.getElementById(link.getAttribute("href").slice(1));
    const gallery = target && galleries.get(target);
    if (!gallery) return;
    event.preventDefault();
    gallery.show(gallery.frames.indexOf(target));
    if (!link.closest(".steps")) target.closest(".gallery").scrollIntoView({ behavior: "smooth", block: "start" });
  });
  const box = document.querySelector("dialog.lightbox");
  if (box && box.showModal) setUpLightbox(box);
})();
